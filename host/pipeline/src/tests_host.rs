//! The plugin host: pipelines, post-process chains, and versions swapped
//! from the plugin directory.

use std::sync::Arc;

use kiln_plugins::FinishReason;

use crate::tests::loaded;
use crate::{OutputSetup, PipelineError, PipelineSpec, PluginHost, PluginsConfig, PostOutput, Source};

fn host(dir: Option<&std::path::Path>, pipelines: &[(&str, PipelineSpec)]) -> Result<PluginHost, PipelineError> {
    let (_, tokenizer) = loaded();
    let config = PluginsConfig {
        dir: dir.map(|d| d.to_path_buf()),
        watch: false,
        pipelines: pipelines.iter().map(|(n, s)| (n.to_string(), s.clone())).collect(),
        ..PluginsConfig::default()
    };
    PluginHost::new(&tokenizer, config)
}

fn post(names: &[&str]) -> PipelineSpec {
    PipelineSpec { post: names.iter().map(|n| n.to_string()).collect(), ..PipelineSpec::default() }
}

#[test]
fn a_stop_in_an_early_stage_flushes_the_later_ones() {
    let host = host(None, &[("chain", post(&["stop-sequences", "redact"]))]).unwrap();
    let stop = ["END".to_string()];
    let output = OutputSetup { stop: &stop, tools: &[], tool_syntax: None };
    let mut chain = host.resolve(Some("chain")).unwrap().post_chain(&output, None).unwrap();
    let first = chain.push("mail ann@exa").unwrap();
    assert_eq!(first, PostOutput { text: "mail ".into(), tool_calls: Vec::new(), stopped: false });
    // The stop ends the text mid-word: redact's held word is masked and let out.
    let second = chain.push("mple.orgEND and more").unwrap();
    assert_eq!(second, PostOutput { text: "[email]".into(), tool_calls: Vec::new(), stopped: true });

    let mut chain = host.resolve(Some("chain")).unwrap().post_chain(&output, None).unwrap();
    let text = chain.push("key sk-abcdefghijklmnopqrstuv").unwrap().text;
    let end = chain.finish(FinishReason::Length).unwrap();
    assert_eq!(text + &end.text, "key [api-key]");
}

#[test]
fn the_tool_call_parser_goes_first_and_its_calls_skip_the_later_stages() {
    let host = host(None, &[("chain", post(&["redact"]))]).unwrap();
    let tools = [kiln_chat::Tool { name: "mail".into(), description: String::new(), parameters: "{}".into() }];
    let output = OutputSetup { stop: &[], tools: &tools, tool_syntax: Some(kiln_chat::ToolSyntax::Hermes) };
    let parser = host.tool_call_parser(&output).unwrap();
    let mut chain = host.resolve(Some("chain")).unwrap().post_chain(&output, Some(parser)).unwrap();
    let mut out = chain.push("Writing to ann@example.org <tool_call>{\"name\": \"mail\", ").unwrap();
    out.extend(chain.push("\"arguments\": {\"to\": \"ann@example.org\"}}</tool_call>").unwrap());
    out.extend(chain.finish(FinishReason::Stop).unwrap());
    // The text went through redact; the call's arguments did not.
    assert_eq!(out.text, "Writing to [email]");
    assert_eq!(out.tool_calls.len(), 1);
    assert_eq!(out.tool_calls[0].arguments, r#"{"to":"ann@example.org"}"#);
}

#[test]
fn pipelines_are_checked_against_the_plugins_at_start() {
    let unknown = PipelineSpec { sampler: Some("nowhere".into()), ..PipelineSpec::default() };
    let err = host(None, &[("p", unknown)]).unwrap_err().to_string();
    assert!(err.contains("pipelines.p") && err.contains("nowhere"), "{err}");
    let wrong = PipelineSpec { sampler: Some("redact".into()), ..PipelineSpec::default() };
    let err = host(None, &[("p", wrong)]).unwrap_err().to_string();
    assert!(err.contains("redact") && err.contains("post-process"), "{err}");
    assert!(host(None, &[("native", post(&[]))]).is_err(), "native cannot be redefined");
    let err = host(None, &[]).unwrap().resolve(Some("missing")).unwrap_err().to_string();
    assert!(err.contains("default, native"), "{err}");
}

#[test]
fn a_file_that_fails_to_load_leaves_the_previous_version_serving() {
    let dir = tempfile::tempdir().unwrap();
    let built = kiln_plugins::built_plugins_dir();
    std::fs::copy(built.join("redact.wasm"), dir.path().join("mine.wasm")).unwrap();
    let host = Arc::new(host(Some(dir.path()), &[("p", post(&["mine"]))]).unwrap());
    let first = host.plugin("mine").unwrap();
    assert_eq!(first.source, Source::File(dir.path().join("mine.wasm")));
    let before = host.resolve(Some("p")).unwrap();

    // Broken bytes, then a plugin of the wrong kind for pipeline `p`.
    std::fs::write(dir.path().join("mine.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    assert!(matches!(host.sync_file("mine"), Err(PipelineError::LoadFailed { .. })));
    std::fs::copy(built.join("default_sampler.wasm"), dir.path().join("mine.wasm")).unwrap();
    let err = host.sync_file("mine").unwrap_err().to_string();
    assert!(err.contains("pipeline \"p\""), "{err}");
    let entry = host.plugin("mine").unwrap();
    assert_eq!(entry.info().unwrap().sha256, first.info().unwrap().sha256);
    assert!(entry.last_error.is_some());

    // A good new version swaps in; a request resolved before keeps the old one.
    std::fs::copy(built.join("stop_sequences.wasm"), dir.path().join("mine.wasm")).unwrap();
    let swapped = host.sync_file("mine").unwrap();
    assert_eq!((swapped.reloads, swapped.last_error.is_none()), (1, true));
    assert_eq!(before.plugins()[0].name, "redact");
    assert_eq!(host.resolve(Some("p")).unwrap().plugins()[0].name, "stop-sequences");

    // A file a pipeline needs keeps serving when it disappears.
    std::fs::remove_file(dir.path().join("mine.wasm")).unwrap();
    assert!(host.sync_file("mine").is_err());
    assert_eq!(host.resolve(Some("p")).unwrap().plugins()[0].name, "stop-sequences");
}

#[test]
fn the_watcher_loads_a_file_saved_into_the_plugin_directory() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(host(Some(dir.path()), &[]).unwrap());
    let _watcher = host.watch().unwrap();
    // An editor's save: a temporary file, renamed over the target.
    let tmp = dir.path().join(".fresh.wasm.swp");
    std::fs::copy(kiln_plugins::built_plugins_dir().join("redact.wasm"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.path().join("fresh.wasm")).unwrap();
    let started = std::time::Instant::now();
    while host.plugin("fresh").is_none() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the watcher never loaded fresh.wasm");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(host.plugin("fresh").unwrap().info().unwrap().name, "redact");
    assert!(host.plugin(".fresh").is_none(), "temporary files are not plugins");
}

#[test]
fn a_built_in_of_the_wrong_kind_never_replaces_a_plugin_a_pipeline_needs() {
    let dir = tempfile::tempdir().unwrap();
    // A sampler under the name of the built-in post-processor `redact`.
    std::fs::copy(kiln_plugins::built_plugins_dir().join("default_sampler.wasm"), dir.path().join("redact.wasm"))
        .unwrap();
    let sampler = PipelineSpec { sampler: Some("redact".into()), ..PipelineSpec::default() };
    let host = host(Some(dir.path()), &[("p", sampler)]).unwrap();
    assert!(matches!(host.remove("redact"), Err(PipelineError::Conflict(_))));
    std::fs::remove_file(dir.path().join("redact.wasm")).unwrap();
    assert!(host.sync_file("redact").is_err(), "the file's loss is reported");
    assert_eq!(host.resolve(Some("p")).unwrap().plugins()[0].name, "default-sampler");
}

#[test]
fn reload_loads_a_new_file_and_retries_refused_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(Some(dir.path()), &[]).unwrap();
    assert!(matches!(host.reload("later"), Err(PipelineError::UnknownPlugin(_))));
    std::fs::copy(kiln_plugins::built_plugins_dir().join("redact.wasm"), dir.path().join("later.wasm")).unwrap();
    assert_eq!(host.reload("later").unwrap().info().unwrap().name, "redact");

    std::fs::write(dir.path().join("later.wasm"), b"not wasm").unwrap();
    let first = host.sync_file("later").unwrap_err().to_string();
    // The watcher does not try the same bytes twice; an explicit reload does.
    assert_eq!(host.plugin("later").unwrap().failed_reloads, 1);
    assert_eq!(host.sync_file("later").unwrap_err().to_string(), first);
    assert_eq!(host.plugin("later").unwrap().failed_reloads, 1);
    assert!(host.reload("later").is_err());
    assert_eq!(host.plugin("later").unwrap().failed_reloads, 2);
}
