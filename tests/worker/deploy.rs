//! The deployment files in `deploy/`: the Kubernetes objects validate against the Kubernetes
//! API schema (kubernetes-validate, with the schemas it ships) and the ScaledObject against
//! KEDA's CRD schema (tests/data), the manifests agree with the worker's own configuration
//! keys, probes and port, and the systemd unit passes `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Command;

use print_abort_worker::Settings;
use serde_json::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Every object of the kustomize base, by the file it is in.
fn objects() -> Vec<(String, Value)> {
    let kustomization: Value =
        serde_norway::from_str(&read("deploy/kubernetes/kustomization.yaml")).expect("YAML");
    kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|file| {
            let file = file.as_str().expect("a file name");
            let object: Value = serde_norway::from_str(&read(&format!("deploy/kubernetes/{file}")))
                .unwrap_or_else(|error| panic!("{file}: {error}"));
            (file.to_owned(), object)
        })
        .collect()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo(relative)).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

fn kind<'a>(objects: &'a [(String, Value)], kind: &str) -> &'a Value {
    &objects
        .iter()
        .find(|(_, object)| object["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
        .1
}

#[test]
fn the_kubernetes_objects_validate_against_the_api_schema() {
    let tool =
        std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".to_owned());
    let files: Vec<PathBuf> = objects()
        .into_iter()
        .filter(|(_, object)| object["apiVersion"] != "keda.sh/v1alpha1")
        .map(|(file, _)| repo(&format!("deploy/kubernetes/{file}")))
        .collect();
    let output = Command::new(&tool)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "{tool} could not be run ({error}). It is PyPI's kubernetes-validate; \
                 scripts/test installs it into target/tools; by hand: pip install \
                 kubernetes-validate (or set KUBERNETES_VALIDATE to its path)"
            )
        });
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(files.len(), 5, "every built-in object was validated");
    // And the tool does refuse what the API would: a misspelt field.
    let broken =
        read("deploy/kubernetes/poddisruptionbudget.yaml").replace("minAvailable", "minAvailabel");
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("a temporary file");
    std::fs::write(file.path(), broken).expect("written");
    let refused = Command::new(&tool)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(file.path())
        .output()
        .expect("the tool runs");
    assert!(!refused.status.success(), "a misspelt field passed");
}

#[test]
fn the_scaled_object_validates_against_kedas_crd_schema() {
    let crd: Value =
        serde_norway::from_str(&read("tests/data/keda.sh_scaledobjects.yaml")).expect("the CRD");
    let version = crd["spec"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|version| version["name"] == "v1alpha1")
        .expect("v1alpha1");
    let schema = &version["schema"]["openAPIV3Schema"];
    let validator = jsonschema::validator_for(schema).expect("KEDA's schema compiles");
    let objects = objects();
    let scaled = kind(&objects, "ScaledObject");
    let problems: Vec<String> = validator
        .iter_errors(scaled)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    // The schema is strict enough to catch a misspelt field.
    let mut broken = scaled.clone();
    broken["spec"]["minReplicaCount"] = Value::from("one");
    assert!(!validator.is_valid(&broken));
}

#[test]
fn the_manifests_agree_with_the_workers_configuration() {
    let objects = objects();
    let config_map = kind(&objects, "ConfigMap");
    let toml = config_map["data"]["worker.toml"]
        .as_str()
        .expect("worker.toml");
    let file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("a temporary file");
    std::fs::write(file.path(), toml).expect("written");
    // The Secret's keys, as the container gets them through envFrom.
    let secret = kind(&objects, "Secret");
    let environment: std::collections::HashMap<String, String> = secret["stringData"]
        .as_object()
        .expect("stringData")
        .iter()
        .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_owned()))
        .collect();
    // Unknown keys and values of the wrong shape are errors, so this checks every name.
    let settings = Settings::load_from(
        Path::new("/nonexistent/default.toml"),
        Some(file.path()),
        Some(environment.clone()),
    )
    .expect("the ConfigMap and the Secret configure the worker");
    assert!(
        settings.amqp.url.nodes().len() >= 2,
        "the Secret lists a cluster"
    );
    for key in environment.keys() {
        assert!(
            key.starts_with("PRINT_ABORT__") || key == "KEDA_RABBITMQ_HOST",
            "{key} is neither a worker key nor KEDA's"
        );
    }

    let deployment = kind(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let listen = settings.http.listen.expect("http.listen is set");
    assert_eq!(container["ports"][0]["containerPort"], listen.port());
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mount = container["volumeMounts"][0]["mountPath"]
        .as_str()
        .expect("a mount");
    assert_eq!(args, ["run", "--config", &format!("{mount}/worker.toml")]);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    assert!(grace > settings.worker.shutdown_grace.as_secs(), "{grace}");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(
        container["resources"]["requests"]["memory"].is_string()
            && container["resources"]["limits"]["memory"].is_string()
    );

    let scaled = kind(&objects, "ScaledObject");
    let trigger = &scaled["spec"]["triggers"][0]["metadata"];
    assert_eq!(trigger["queueName"], settings.amqp.command_queue.as_str());
    assert!(environment.contains_key(trigger["hostFromEnv"].as_str().expect("hostFromEnv")));
    assert!(
        scaled["spec"]["minReplicaCount"].as_u64() >= Some(1),
        "never zero"
    );
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let service_account = kind(&objects, "ServiceAccount");
    assert_eq!(
        pod["serviceAccountName"],
        service_account["metadata"]["name"]
    );
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = read("deploy/systemd/print-abort-worker.service");
    // verify wants the executables to exist: point them at the binary this suite built.
    let binary = env!("CARGO_BIN_EXE_print-abort-worker");
    let unit = unit.replace("/usr/local/bin/print-abort-worker", binary);
    assert!(unit.contains("Restart=on-failure") && unit.contains("DynamicUser=yes"));
    let folder = tempfile::tempdir().expect("a temporary folder");
    let path = folder.path().join("print-abort-worker.service");
    std::fs::write(&path, unit).expect("written");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|error| {
            panic!("systemd-analyze could not be run ({error}); it comes with systemd")
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Only the unit's own lines count: the host's other units may have problems of their
    // own, and the files it names (EnvironmentFile) exist only where it is installed.
    let own: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("print-abort-worker.service"))
        .collect();
    assert!(own.is_empty(), "{stderr}");
}
