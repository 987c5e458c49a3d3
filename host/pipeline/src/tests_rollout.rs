//! Canary rollouts on real components: the share, stickiness, promotion,
//! rollback by hand and automatic rollback of a version that fails more.

use std::path::Path;

use kiln_engine::SamplingParams;

use crate::tests::loaded;
use crate::{CANARY_DIR, PipelineSpec, PluginHost, PluginsConfig, RolloutConfig, Routing, Sticky};

fn built(file: &str) -> Vec<u8> {
    std::fs::read(crate::built_plugins_dir().join(file)).unwrap()
}

/// A host whose plugin `s` (a sampler: default-sampler's bytes) runs in
/// pipeline `p` with `mode = flaky` (which only the hostile guest reads).
fn host(dir: &Path, rollout: RolloutConfig) -> PluginHost {
    std::fs::write(dir.join("s.wasm"), built("default_sampler.wasm")).unwrap();
    let (_, tokenizer) = loaded();
    let spec = PipelineSpec {
        sampler: Some("s".into()),
        config: [("s".to_string(), [("mode".to_string(), "flaky".to_string())].into())].into(),
        ..PipelineSpec::default()
    };
    let config = PluginsConfig {
        dir: Some(dir.to_path_buf()),
        watch: false,
        pipelines: [("p".to_string(), spec)].into(),
        rollout,
        ..PluginsConfig::default()
    };
    PluginHost::new(&tokenizer, config).unwrap()
}

/// Which version of `s` request `id` (of API key `key`) runs.
fn version_for(host: &PluginHost, id: &str, key: Option<&str>) -> String {
    let resolved = host.resolve_for(Some("p"), Some(&Routing { request_id: id, api_key: key })).unwrap();
    resolved.plugins()[0].name.clone()
}

#[test]
fn a_canary_serves_its_share_of_requests_within_three_points() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), RolloutConfig::default());
    host.install_canary("s", &built("hostile_sampler.wasm"), Some(20), Sticky::Request).unwrap();
    let canary = (0..2000).filter(|i| version_for(&host, &format!("req-{i}"), None) == "hostile-sampler").count();
    assert!((340..=460).contains(&canary), "{canary} of 2000 on a 20 % canary");
    // The same request id always lands on the same side.
    assert_eq!(version_for(&host, "req-7", None), version_for(&host, "req-7", None));
    // The canary is kept in canary/, and the stable version is untouched.
    assert!(dir.path().join(CANARY_DIR).join("s.wasm").exists());
    assert_eq!(host.resolve(Some("p")).unwrap().plugins()[0].name, "default-sampler");
}

#[test]
fn a_sticky_canary_gives_each_key_one_version() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), RolloutConfig::default());
    host.install_canary("s", &built("hostile_sampler.wasm"), Some(50), Sticky::Key).unwrap();
    let mut sides = std::collections::BTreeSet::new();
    for key in ["team-a", "team-b", "team-c", "team-d", "team-e", "team-f"] {
        let seen: std::collections::BTreeSet<String> =
            (0..20).map(|i| version_for(&host, &format!("{key}-{i}"), Some(key))).collect();
        assert_eq!(seen.len(), 1, "{key} saw {seen:?}");
        sides.extend(seen);
    }
    assert_eq!(sides.len(), 2, "six keys on a 50 % canary all fell on one side");
}

#[test]
fn promotion_makes_the_canary_stable_and_rollback_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), RolloutConfig::default());
    let hostile = built("hostile_sampler.wasm");
    host.install_canary("s", &hostile, Some(10), Sticky::Request).unwrap();
    let entry = host.rollback("s").unwrap();
    assert!(entry.canary.is_none());
    let rollback = entry.last_rollback.as_ref().unwrap();
    assert!(!rollback.automatic && rollback.version.starts_with("hostile-sampler@"), "{rollback:?}");
    assert_eq!(entry.rollbacks, 1);
    assert!(!dir.path().join(CANARY_DIR).join("s.wasm").exists(), "a rollback removes the canary's file");
    assert!(host.rollback("s").is_err(), "no canary left to roll back");

    host.install_canary("s", &hostile, Some(10), Sticky::Request).unwrap();
    let entry = host.promote("s").unwrap();
    assert!(entry.canary.is_none());
    assert_eq!(entry.info().unwrap().name, "hostile-sampler");
    assert_eq!(std::fs::read(dir.path().join("s.wasm")).unwrap(), hostile, "the canary's file is now the plugin's");
    assert!(!dir.path().join(CANARY_DIR).join("s.wasm").exists());
    assert_eq!(version_for(&host, "any", None), "hostile-sampler");
    let again = host.install_canary("s", &hostile, Some(10), Sticky::Request).unwrap_err();
    assert!(again.to_string().contains("already"), "{again}");
}

#[test]
fn a_canary_that_fails_more_is_rolled_back_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let rollout = RolloutConfig { min_requests: 50, ..RolloutConfig::default() };
    let host = host(dir.path(), rollout);
    // The hostile guest in `flaky` mode fails 3 prompts in 10.
    host.install_canary("s", &built("hostile_sampler.wasm"), Some(50), Sticky::Request).unwrap();
    let params = SamplingParams::default();
    let mut on_canary = 0;
    for i in 0..1000u32 {
        let routing = Routing { request_id: &format!("req-{i}"), api_key: None };
        let resolved = host.resolve_for(Some("p"), Some(&routing)).unwrap();
        if host.plugin("s").unwrap().canary.is_none() {
            break;
        }
        on_canary += usize::from(resolved.plugins()[0].name == "hostile-sampler");
        let mut policy = resolved.sampler(&params, &[i, 1, 2], 8).unwrap().unwrap();
        let _ = policy.step(None);
    }
    let entry = host.plugin("s").unwrap();
    assert!(entry.canary.is_none(), "still a canary after {on_canary} requests");
    let rollback = entry.last_rollback.as_ref().unwrap();
    assert!(rollback.automatic && rollback.reason.contains("failed"), "{rollback:?}");
    // Judged as soon as it had served enough requests to judge.
    assert!((50..=52).contains(&on_canary), "rolled back after {on_canary} canary requests");
    assert!(!dir.path().join(CANARY_DIR).join("s.wasm").exists());
    // The same bytes dropped into canary/ again are refused: they were rolled back.
    std::fs::write(dir.path().join(CANARY_DIR).join("s.wasm"), built("hostile_sampler.wasm")).unwrap();
    let refused = host.sync_canary_file("s").unwrap_err();
    assert!(refused.to_string().contains("rolled back"), "{refused}");
}

#[test]
fn a_file_in_canary_at_start_is_a_canary_at_the_configured_share() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(CANARY_DIR)).unwrap();
    std::fs::write(dir.path().join(CANARY_DIR).join("s.wasm"), built("hostile_sampler.wasm")).unwrap();
    let host = host(dir.path(), RolloutConfig { canary_share: 25, ..RolloutConfig::default() });
    let canary = host.plugin("s").unwrap().canary.clone().expect("the file is a canary");
    assert_eq!((canary.share, canary.sticky), (25, Sticky::Request));
    std::fs::remove_file(dir.path().join(CANARY_DIR).join("s.wasm")).unwrap();
    assert!(host.sync_canary_file("s").unwrap().canary.is_none(), "removing the file ends the canary");
}
