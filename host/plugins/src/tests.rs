//! The runtime on real components built from source by `build.rs`: the
//! first-party default sampler and a guest that misbehaves on purpose.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    Compiler, Loaded, PluginError, PluginKind, Runtime, RuntimeConfig, SamplerPlugin, SamplingParams, StepPlan, Tier,
    Vocabulary,
};

fn built(name: &str) -> PathBuf {
    PathBuf::from(env!("KILN_BUILT_PLUGINS")).join(format!("{}.wasm", name.replace('-', "_")))
}

fn vocabulary() -> Arc<Vocabulary> {
    Arc::new(Vocabulary::new((0..100u32).map(|i| format!("t{i}")), vec![0]))
}

fn runtime() -> Runtime {
    runtime_with(Compiler::default())
}

fn runtime_with(compiler: Compiler) -> Runtime {
    let config = RuntimeConfig {
        call_timeout: Duration::from_millis(50),
        memory_limit: 16 << 20,
        compiler,
        ..RuntimeConfig::default()
    };
    Runtime::new(config, vocabulary()).unwrap()
}

fn sampler(runtime: &Runtime, name: &str) -> Arc<SamplerPlugin> {
    match runtime.load(&built(name)).unwrap_or_else(|e| panic!("{e}")) {
        Loaded::Sampler(s) => s,
        other => panic!("{name} is not a sampler: {other:?}"),
    }
}

fn params() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        frequency_penalty: 0.0,
        presence_penalty: 0.0,
    }
}

fn mode(m: &str) -> Vec<(String, String)> {
    vec![("mode".to_string(), m.to_string())]
}

#[test]
fn the_default_sampler_loads_and_plans_plain_sampling() {
    let rt = runtime();
    let plugin = sampler(&rt, "default-sampler");
    let info = plugin.info();
    assert_eq!(
        (info.name.as_str(), info.version.as_str(), info.kind),
        ("default-sampler", "0.1.0", PluginKind::Sampler)
    );
    assert_eq!(info.sha256.len(), 64);
    let mut session = plugin.start(params(), &[1, 2, 3], &[]).unwrap();
    for last in [None, Some(5), Some(6)] {
        assert_plain_sampling(&session.step(last).unwrap());
    }
}

/// A plan that changes nothing: sample with the request's parameters, go on.
fn assert_plain_sampling(plan: &StepPlan) {
    assert!(plan.params.is_none() && plan.bias.is_empty() && plan.allowed.is_empty() && plan.forced.is_empty());
    assert!(!plan.stop && plan.choose_from == 0);
}

#[test]
fn a_new_version_serves_from_its_baseline_build_until_the_optimized_one_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { cache_dir: Some(dir.path().to_path_buf()), ..RuntimeConfig::default() };
    let first = Runtime::new(config.clone(), vocabulary()).unwrap();
    let Loaded::Sampler(plugin) = first.load(&built("default-sampler")).unwrap() else { panic!("not a sampler") };
    // A session opened now runs whichever build served when it started ...
    let mut early = plugin.start(params(), &[1, 2, 3], &[]).unwrap();
    first.wait_for_optimized_builds();
    assert_eq!(plugin.tier(), Tier::Optimized);
    assert_eq!(first.compilations(), 2, "a baseline build, then the optimized one");
    // ... and keeps it, beside sessions on the optimized build.
    let mut late = plugin.start(params(), &[1, 2, 3], &[]).unwrap();
    for last in [None, Some(5), Some(6)] {
        assert_plain_sampling(&early.step(last).unwrap());
        assert_plain_sampling(&late.step(last).unwrap());
    }
    // The same version throughout: one set of counters.
    assert_eq!(plugin.metrics().sessions, 2);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "one artifact in the cache");
    drop((early, late, plugin, first));
    let restarted = Runtime::new(config, vocabulary()).unwrap();
    let loaded = restarted.load(&built("default-sampler")).unwrap();
    assert_eq!(restarted.compilations(), 0, "loaded from the cache");
    assert_eq!(loaded.tier(), Tier::Optimized, "a cached build serves optimized at once");
    assert_eq!(loaded.info().name, "default-sampler");
}

#[test]
fn a_version_replaced_before_its_optimized_build_is_never_optimized() {
    let rt = runtime();
    let held = rt.hold_optimized_builds();
    // Loaded and dropped, as versions that newer files replaced in turn.
    for _ in 0..3 {
        drop(rt.load(&built("redact")).unwrap());
    }
    let kept = rt.load(&built("redact")).unwrap();
    drop(held);
    rt.wait_for_optimized_builds();
    assert_eq!(kept.tier(), Tier::Optimized);
    assert_eq!(rt.compilations(), 4 + 1, "four baseline builds, one optimized build");
}

#[test]
fn a_component_winch_refuses_is_compiled_optimized_under_tiered() {
    // A tail call: Cranelift compiles it, Winch does not take the proposal.
    let bytes = wat::parse_str("(component (core module (func $f (return_call $f))))").unwrap();
    let not_a_plugin = "exports none of kiln's plugin interfaces";
    // Compiled (by Cranelift), then refused for what it is, not for Winch.
    let err = runtime().load_bytes("tail-call.wasm", &bytes).unwrap_err();
    assert!(err.to_string().contains(not_a_plugin), "{err}");
    let err = runtime_with(Compiler::Baseline).load_bytes("tail-call.wasm", &bytes).unwrap_err();
    assert!(matches!(err, PluginError::Invalid { .. }) && !err.to_string().contains(not_a_plugin), "{err}");
}

#[test]
fn each_compiler_setting_serves_from_its_build() {
    for (compiler, tier) in [(Compiler::Baseline, Tier::Baseline), (Compiler::Optimized, Tier::Optimized)] {
        let rt = runtime_with(compiler);
        let plugin = sampler(&rt, "default-sampler");
        rt.wait_for_optimized_builds();
        assert_eq!(plugin.tier(), tier, "{compiler:?}");
        assert_eq!(rt.compilations(), 1, "{compiler:?}: one build");
        assert_plain_sampling(&plugin.start(params(), &[1], &[]).unwrap().step(None).unwrap());
    }
    assert_eq!("tiered".parse::<Compiler>(), Ok(Compiler::Tiered));
    let err = "fast".parse::<Compiler>().unwrap_err();
    assert!(err.contains("tiered, optimized or baseline"), "{err}");
}

#[test]
fn a_cached_artifact_that_fails_its_digest_is_recompiled_and_the_cache_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("compiled");
    // Optimized builds only: the one build is made before `load` returns.
    let config =
        RuntimeConfig { cache_dir: Some(cache.clone()), compiler: Compiler::Optimized, ..RuntimeConfig::default() };
    Runtime::new(config.clone(), vocabulary()).unwrap().load(&built("default-sampler")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o700);
    }
    // Flip one byte of the stored code.
    let artifact = std::fs::read_dir(&cache).unwrap().next().unwrap().unwrap().path();
    let mut stored = std::fs::read(&artifact).unwrap();
    let last = stored.len() - 1;
    stored[last] ^= 0xff;
    std::fs::write(&artifact, &stored).unwrap();
    let restarted = Runtime::new(config, vocabulary()).unwrap();
    let loaded = restarted.load(&built("default-sampler")).unwrap();
    assert_eq!(restarted.compilations(), 1, "not loaded from the tampered file");
    assert_eq!(loaded.info().name, "default-sampler");
    // And the cache holds a good copy again.
    assert_ne!(std::fs::read(&artifact).unwrap(), stored);
}

#[test]
fn a_file_that_is_not_a_component_is_refused_with_its_path() {
    let rt = runtime();
    let err = rt.load_bytes("broken.wasm", b"\0asm garbage").unwrap_err();
    assert!(matches!(err, PluginError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("broken.wasm"), "{err}");
}

#[test]
fn hostile_guests_fail_only_their_own_session_on_either_build() {
    hostile_guests_fail_only_their_own_session(Compiler::Baseline);
    hostile_guests_fail_only_their_own_session(Compiler::Optimized);
}

fn hostile_guests_fail_only_their_own_session(compiler: Compiler) {
    let rt = runtime_with(compiler);
    let plugin = sampler(&rt, "hostile-sampler");
    let named = |e: &PluginError| assert!(e.to_string().contains("hostile-sampler@0.1.0"), "{e}");

    let err = plugin.start(params(), &[1], &mode("loop")).unwrap().step(None).unwrap_err();
    assert!(matches!(err, PluginError::Timeout { limit_ms: 50, .. }), "{err}");
    named(&err);

    let err = plugin.start(params(), &[1], &mode("memory")).unwrap().step(None).unwrap_err();
    assert!(matches!(err, PluginError::OutOfMemory { limit_mib: 16, .. }), "{err}");
    named(&err);

    let err = plugin.start(params(), &[1], &mode("trap")).unwrap().step(None).unwrap_err();
    assert!(matches!(err, PluginError::Trap { .. }), "{err}");
    assert!(err.to_string().contains("panics on purpose"), "the panic message is reported: {err}");
    named(&err);

    let err = plugin.start(params(), &[1], &mode("garbage")).unwrap().step(None).unwrap_err();
    assert!(matches!(err, PluginError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");

    let err = plugin.start(params(), &[1], &mode("refuse")).unwrap_err();
    assert!(err.to_string().contains("refuses to start"), "{err}");

    // A step's own error (new in 0.2.0) fails the session with its message.
    let err = plugin.start(params(), &[1], &mode("fail")).unwrap().step(None).unwrap_err();
    assert!(matches!(err, PluginError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("fails on purpose"), "{err}");
    named(&err);

    // The plugin, and a session of it that behaves, are untouched.
    let mut fine = plugin.start(params(), &[1], &mode("behave")).unwrap();
    assert!(!fine.step(None).unwrap().stop);
}

#[test]
fn a_session_after_one_that_timed_out_still_serves() {
    let rt = runtime();
    let plugin = sampler(&rt, "hostile-sampler");
    let err = plugin.start(params(), &[1], &mode("loop")).unwrap().step(None).unwrap_err();
    assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
    // "behave" plans plain sampling at every step, and never stops.
    let mut fine = plugin.start(params(), &[1], &mode("behave")).unwrap();
    for step in 0..100 {
        let plan = fine.step((step > 0).then_some(1)).unwrap_or_else(|e| panic!("step {step}: {e}"));
        assert_plain_sampling(&plan);
    }
}

fn load(runtime: &Runtime, name: &str) -> Loaded {
    runtime.load(&built(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn options(stop: &[&str], tools: &[&str]) -> crate::OutputOptions {
    crate::OutputOptions {
        stop: stop.iter().map(|s| s.to_string()).collect(),
        tools: tools
            .iter()
            .map(|t| crate::Tool { name: t.to_string(), description: String::new(), parameters: "{}".into() })
            .collect(),
        tool_syntax: None,
        config: Vec::new(),
    }
}

/// Feeds chunks through a post-process component; returns the text out,
/// the tool calls found and whether it stopped the generation.
fn post_process_calls(
    runtime: &Runtime,
    name: &str,
    options: &crate::OutputOptions,
    chunks: &[&str],
) -> (String, Vec<crate::ToolCall>, bool) {
    let Loaded::PostProcess(plugin) = load(runtime, name) else { panic!("{name} is not a post-processor") };
    let mut session = plugin.start(options).unwrap();
    let (mut out, mut calls) = (String::new(), Vec::new());
    for chunk in chunks {
        match session.on_chunk(chunk).unwrap() {
            crate::ChunkAction::Emit(e) => {
                out.push_str(&e.text);
                calls.extend(e.tool_calls);
            }
            crate::ChunkAction::Stop(e) => {
                calls.extend(e.tool_calls);
                return (out + &e.text, calls, true);
            }
            crate::ChunkAction::Abort(message) => panic!("aborted: {message}"),
        }
    }
    let rest = session.finish(crate::FinishReason::Length).unwrap();
    out.push_str(&rest.text);
    calls.extend(rest.tool_calls);
    (out, calls, false)
}

fn post_process(runtime: &Runtime, name: &str, stop: &[&str], chunks: &[&str]) -> (String, bool) {
    let (text, calls, stopped) = post_process_calls(runtime, name, &options(stop, &[]), chunks);
    assert!(calls.is_empty(), "{name} made tool calls: {calls:?}");
    (text, stopped)
}

#[test]
fn the_tool_calls_component_turns_hermes_blocks_split_across_chunks_into_calls() {
    let rt = runtime();
    let chunks = [
        "Checking.\n<tool",
        "_call>\n{\"name\": \"get_weather\", \"argu",
        "ments\": {\"city\": \"Paris\"}}\n</tool_call>",
    ];
    let (text, calls, stopped) = post_process_calls(&rt, "tool-calls", &options(&[], &["get_weather"]), &chunks);
    assert_eq!(text, "Checking.");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!((calls[0].name.as_str(), calls[0].arguments.as_str()), ("get_weather", r#"{"city":"Paris"}"#));
    assert!(!stopped);
    // A function the request did not offer is text, not a call.
    let (text, calls, _) = post_process_calls(&rt, "tool-calls", &options(&[], &["other"]), &chunks);
    assert!(calls.is_empty() && text.contains("<tool_call>"), "{text}");
}

#[test]
fn a_component_built_against_contract_0_1_0_loads_and_serves() {
    let rt = runtime();
    let Loaded::PostProcess(plugin) = load(&rt, "legacy-shout") else { panic!("not a post-processor") };
    assert_eq!(plugin.info().contract, crate::Contract::V0_1);
    assert_eq!(plugin.info().contract.version(), "0.1.0");
    assert_eq!(post_process(&rt, "legacy-shout", &[], &["hello ", "world"]), ("HELLO WORLD!".into(), false));
    assert_eq!(load(&rt, "redact").info().contract, crate::Contract::Current);
}

#[test]
fn the_stop_sequences_component_holds_back_matches_that_straddle_chunks() {
    let rt = runtime();
    assert_eq!(post_process(&rt, "stop-sequences", &["STOP"], &["one ST", "O", "P two"]), ("one ".into(), true));
    assert_eq!(post_process(&rt, "stop-sequences", &["STOP"], &["one ST", "ILL"]), ("one STILL".into(), false));
}

#[test]
fn the_redact_component_masks_secrets_split_across_chunks() {
    let rt = runtime();
    let chunks = ["mail jane", ".doe@exa", "mple.com, key sk-abcdef", "ghijklmnopqrst done"];
    let (text, stopped) = post_process(&rt, "redact", &[], &chunks);
    assert_eq!(text, "mail [email], key [api-key] done");
    assert!(!stopped);
}

#[test]
fn the_chat_template_component_renders_as_the_host_does() {
    let rt = runtime();
    let Loaded::Template(plugin) = load(&rt, "chat-template") else { panic!("not a template") };
    let jinja = "{% for m in messages %}{% if loop.first and m.role != 'system' %}<|sys|>default<|end|>{% endif %}\
        <|{{ m.role }}|>{{ m.content | trim }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
    let messages = [("user", " Hi there "), ("assistant", "Hello!"), ("user", "Bye")];
    let input = crate::TemplateInput {
        messages: messages
            .iter()
            .map(|(r, c)| crate::ChatMessage {
                role: r.to_string(),
                content: c.to_string(),
                tool_calls: Vec::new(),
                tool_call_id: None,
                name: None,
            })
            .collect(),
        add_generation_prompt: true,
        chat_template: Some(jinja.into()),
        bos_token: String::new(),
        eos_token: "<|end|>".into(),
        config: Vec::new(),
        tools: Vec::new(),
        tool_choice: crate::ToolChoice::Auto,
    };
    let rendered = plugin.render(&input).unwrap();
    let host = kiln_chat::ChatTemplate::new(Some(jinja), "", "<|end|>").unwrap();
    let host_messages: Vec<_> = messages.iter().map(|(r, c)| kiln_chat::ChatMessage::new(*r, *c)).collect();
    assert_eq!(rendered.prompt, host.render(&host_messages, true).unwrap());
    assert!(rendered.prompt.starts_with("<|sys|>default<|end|><|user|>Hi there<|end|>"), "{}", rendered.prompt);

    let refusing = crate::TemplateInput { chat_template: Some("{{ raise_exception('no') }}".into()), ..input };
    let err = plugin.render(&refusing).unwrap_err();
    assert!(matches!(err, PluginError::Refused { .. }) && err.to_string().contains("chat-template@0.1.0"), "{err}");
}

#[test]
fn with_every_pooled_instance_in_use_a_new_session_is_busy_not_a_crash() {
    // Loading takes one instance for its smoke call and gives it back.
    let config = RuntimeConfig { max_instances: 2, ..RuntimeConfig::default() };
    let rt = Runtime::new(config, vocabulary()).unwrap();
    let plugin = sampler(&rt, "default-sampler");
    // Each build has its pool: hold the optimized one's.
    rt.wait_for_optimized_builds();
    let held: Vec<_> = (0..2).map(|_| plugin.start(params(), &[1], &[]).unwrap()).collect();
    match plugin.start(params(), &[1], &[]) {
        Err(PluginError::Busy { instances: 2, .. }) => {}
        Err(other) => panic!("expected Busy, got {other}"),
        Ok(_) => panic!("a third instance from a pool of two"),
    }
    drop(held);
    assert!(plugin.start(params(), &[1], &[]).is_ok(), "a freed instance is taken again");
}
