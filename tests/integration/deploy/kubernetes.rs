//! The Kubernetes manifests (deploy/k8s): validated against a pinned
//! Kubernetes version, and checked against kiln's flags, probes, config and
//! each other.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{assert_known, drain_secs, kiln_toml, output_text, read, root, strings, tools, version, yaml};
use crate::{kiln, run};

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

/// The Kubernetes manifests, relative paths.
fn manifest_files() -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["deploy/k8s", "deploy/k8s/gpu"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".yaml") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    files
}

fn objects() -> Vec<Value> {
    manifest_files().iter().flat_map(|f| yaml(f)).collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

#[test]
fn kubernetes_manifests_validate_against_a_pinned_kubernetes_version() {
    let files = manifest_files();
    let out = Command::new(&tools().kubernetes_validate)
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict", "--no-warn"])
        .args(files.iter().map(|f| root().join(f)))
        .output()
        .unwrap();
    let report = output_text(&out);
    assert!(out.status.success(), "kubernetes-validate {KUBERNETES_VERSION}:\n{report}");
    let kinds: BTreeSet<String> = objects().iter().map(|o| o["kind"].as_str().unwrap().to_string()).collect();
    for kind in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "PersistentVolumeClaim",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/k8s: {kinds:?}");
        assert!(report.contains(&format!("resource {}/", kind.to_lowercase())), "{kind} not validated:\n{report}");
    }
}

#[test]
fn the_configmaps_kiln_toml_passes_config_check_alone_and_with_the_secrets_keys() {
    let objects = objects();
    let configmap = object(&objects, "ConfigMap", "kiln-config")["data"]["kiln.toml"].as_str().unwrap().to_string();
    assert_eq!(configmap, read("deploy/kiln.toml"), "the ConfigMap's kiln.toml differs from deploy/kiln.toml");
    let keys = object(&objects, "Secret", "kiln-keys")["stringData"]["keys.toml"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    // Alone, as the compose stack's and the pods' settings; then as the init
    // container joins it with the Secret's keys (`cat kiln.toml keys.toml`),
    // and with deploy/keys.example.toml as the compose stack does.
    for (name, text, keys) in [
        ("alone.toml", configmap.clone(), "0 keys"),
        ("with-secret.toml", configmap.clone() + &keys, "1 keys"),
        ("with-example.toml", configmap.clone() + &read("deploy/keys.example.toml"), "1 keys"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = run(kiln().args(["config", "check"]).arg(&path));
        assert!(out.status.success(), "kiln config check {name}: {}", output_text(&out));
        assert!(output_text(&out).contains(keys), "{name}: {}", output_text(&out));
    }
    // The check can fail: a key the settings do not have is named.
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, configmap.replace("drain_timeout_secs", "drain_timeout")).unwrap();
    let out = run(kiln().args(["config", "check"]).arg(&path));
    assert!(!out.status.success() && output_text(&out).contains("drain_timeout"), "{}", output_text(&out));
}

/// The kiln Deployments: the CPU one and the GPU one.
fn deployments(objects: &[Value]) -> Vec<&Value> {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["kind"] == "Deployment" && o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "kiln"
        })
        .collect();
    assert_eq!(found.len(), 2, "a CPU and a GPU Deployment");
    found
}

#[test]
fn kubernetes_pods_agree_with_kilns_flags_probes_ports_and_drain() {
    let objects = objects();
    let version = version();
    for deployment in deployments(&objects) {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
        assert!(grace > drain_secs(), "{name}: terminationGracePeriodSeconds {grace} <= drain {}", drain_secs());
        let containers = pod["containers"].as_array().unwrap();
        let kiln = containers.iter().find(|c| c["name"] == "kiln").expect("a kiln container");
        let gpu = kiln["resources"]["limits"]["nvidia.com/gpu"].as_i64().unwrap_or(0) > 0;
        let image = if gpu { format!("kiln:{version}-cuda") } else { format!("kiln:{version}") };
        for c in containers.iter().chain(pod["initContainers"].as_array().unwrap()) {
            assert_eq!(c["image"], image.as_str(), "{name}/{}: image", c["name"]);
        }
        assert_eq!(gpu, name.ends_with("-gpu"), "{name}: only the GPU Deployment asks for nvidia.com/gpu");
        let args = strings(&kiln["args"]);
        assert_eq!(args.first().map(String::as_str), Some("serve"), "{name}: {args:?}");
        let env: Vec<String> =
            kiln["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().into()).collect();
        assert_known(name, &env, &args);
        // The port the probes name is the one kiln listens on.
        let port = &kiln["ports"][0];
        assert_eq!((port["name"].as_str(), port["containerPort"].as_i64()), (Some("http"), Some(8000)), "{name}");
        for (probe, path) in [("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
            assert_eq!(kiln[probe]["httpGet"]["path"], path, "{name}: {probe}");
            assert_eq!(kiln[probe]["httpGet"]["port"], "http", "{name}: {probe}");
        }
        assert!(
            kiln["resources"]["requests"]["cpu"].is_string() && kiln["resources"]["requests"]["memory"].is_string()
        );
        // The file kiln is given is the one the config init container writes,
        // from the ConfigMap and the Secret it mounts.
        let config = args.iter().skip_while(|a| *a != "--config").nth(1).expect("--config FILE");
        let init = pod["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "config").unwrap();
        let script = strings(&init["command"]).join(" ");
        assert!(script.ends_with(&format!("> {config}")), "{name}: {script}");
        let mounts = |c: &Value| -> Vec<(String, String)> {
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m["name"].as_str().unwrap().into(), m["mountPath"].as_str().unwrap().into()))
                .collect()
        };
        let volume = |v: &str| pod["volumes"].as_array().unwrap().iter().find(|x| x["name"] == v).unwrap().clone();
        let mut sources = 0;
        for (volume_name, path) in mounts(init) {
            let v = volume(&volume_name);
            if v["configMap"]["name"] == "kiln-config" || v["secret"]["secretName"] == "kiln-keys" {
                let file = if v["configMap"].is_object() { path.clone() } else { format!("{path}/keys.toml") };
                assert!(script.contains(&file), "{name}: the config init container does not read {file}");
                sources += 1;
            }
        }
        assert_eq!(sources, 2, "{name}: the config init container mounts the ConfigMap and the Secret");
        // The model is fetched into the cache kiln serves it from.
        let pull = pod["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "pull").unwrap();
        assert_eq!(strings(&pull["args"]), ["pull"], "{name}");
        assert!(mounts(pull).iter().any(|(v, p)| v == "cache" && p == "/cache"), "{name}: pull writes elsewhere");
        let kiln_mounts: BTreeSet<String> = mounts(kiln).into_iter().map(|(_, p)| p).collect();
        for path in ["/cache", "/data", "/plugins", Path::new(config).parent().unwrap().to_str().unwrap()] {
            assert!(kiln_mounts.contains(path), "{name}: nothing mounted at {path}");
        }
    }
}

#[test]
fn kubernetes_objects_reference_each_other_and_redis() {
    let objects = objects();
    let cpu = object(&objects, "Deployment", "kiln");
    let labels = |o: &Value| o["spec"]["template"]["metadata"]["labels"].as_object().unwrap().clone();
    let selects =
        |selector: &Value, o: &Value| selector.as_object().unwrap().iter().all(|(k, v)| labels(o).get(k) == Some(v));
    for d in deployments(&objects) {
        assert!(
            selects(&object(&objects, "Service", "kiln")["spec"]["selector"], d),
            "the Service misses a Deployment"
        );
        assert!(selects(&object(&objects, "PodDisruptionBudget", "kiln")["spec"]["selector"]["matchLabels"], d));
        for v in d["spec"]["template"]["spec"]["volumes"].as_array().unwrap() {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                object(&objects, "PersistentVolumeClaim", claim);
            }
        }
    }
    assert_eq!(object(&objects, "Service", "kiln")["spec"]["ports"][0]["targetPort"], "http");
    let hpa = &object(&objects, "HorizontalPodAutoscaler", "kiln")["spec"];
    assert_eq!(
        (hpa["scaleTargetRef"]["kind"].as_str(), hpa["scaleTargetRef"]["name"].as_str()),
        (Some("Deployment"), Some("kiln"))
    );
    assert!(cpu["spec"]["replicas"].is_null(), "the HPA owns the replica count; `replicas` would fight it");
    assert_eq!(hpa["metrics"][0]["resource"]["name"], "cpu");
    assert!(read("deploy/k8s/hpa.yaml").contains("#          name: kiln_queue_depth"), "the queue-depth example");
    // [redis] url names the Service and port the StatefulSet serves.
    let url = kiln_toml()["redis"]["url"].as_str().unwrap().to_string();
    let redis = object(&objects, "Service", "redis");
    object(&objects, "StatefulSet", "redis");
    let port = redis["spec"]["ports"][0]["port"].as_i64().unwrap();
    assert!(url.starts_with(&format!("redis://redis:{port}/")), "{url} is not the redis Service");
}
