//! The Grafana dashboard and the Prometheus rules in `docs/` use only the metrics the worker
//! exports (the names `src/telemetry/metrics.rs` records), the dashboard every one of them,
//! and `docs/OPERATIONS.md` documents the same list.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::contract::strings_under;
use crate::helpers::*;

/// The metrics the worker exports, as `docs/OPERATIONS.md` lists them.
const METRICS: &[&str] = &[
    "print_abort_commands_total",
    "print_abort_graph_requests_total",
    "print_abort_graph_request_duration_seconds",
    "print_abort_retries_total",
    "print_abort_commands_in_flight",
    "print_abort_token_requests_total",
    "print_abort_broker_reconnects_total",
    "print_abort_paused",
    "print_abort_redeliveries_total",
    "print_abort_throttled_total",
    "print_abort_tenant_throttled",
    "print_abort_tenant_rate_limit",
    "print_abort_probes_total",
    "print_abort_delivery_limit_total",
    "print_abort_commands_blamed_total",
    "print_abort_task_updates_total",
    "print_abort_build_info",
    "print_abort_broker_node",
];

/// The histograms among [`METRICS`]: queried through their `_bucket`, `_sum` and `_count`.
const HISTOGRAMS: &[&str] = &["print_abort_graph_request_duration_seconds"];

/// PromQL words that look like metric names but are not.
const NOT_METRICS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
];

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

/// The metric names a PromQL expression selects. Label matchers, ranges, strings, numbers,
/// Grafana variables, functions and the label lists of `by (…)` are skipped.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_to = |from: usize, end: char| {
        chars[from + 1..]
            .iter()
            .position(|c| *c == end)
            .map_or(chars.len(), |offset| from + 1 + offset + 1)
    };
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c == '"' {
            i = skip_to(i, '"');
        } else if c == '$' || c.is_ascii_digit() {
            i += 1;
            while i < chars.len() && (is_name(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && is_name(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if matches!(word.as_str(), "by" | "without" | "on" | "ignoring") && called {
                i = skip_to(next, ')');
            } else if !called && !NOT_METRICS.contains(&word.as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Whether `name` is an exported metric, or a series of an exported histogram.
fn exported(name: &str) -> bool {
    METRICS.contains(&name)
        || HISTOGRAMS.iter().any(|histogram| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name == format!("{histogram}{suffix}"))
        })
}

/// The base metric of a name: a histogram series counts as its histogram.
fn base(name: &str) -> String {
    HISTOGRAMS
        .iter()
        .find(|histogram| name.starts_with(*histogram))
        .map_or(name, |histogram| histogram)
        .to_owned()
}

/// Checks every expression, and returns the metrics they use.
fn check_expressions(file: &str, expressions: &[String]) -> BTreeSet<String> {
    assert!(!expressions.is_empty(), "{file} has no queries");
    let mut used = BTreeSet::new();
    for expr in expressions {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{file}: no metric in {expr}");
        for name in names {
            assert!(exported(&name), "{file}: {name} is not exported, in {expr}");
            used.insert(base(&name));
        }
    }
    used
}

#[test]
fn the_list_is_what_the_worker_records() {
    let source = read("src/telemetry/metrics.rs");
    let recorded: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| literal.starts_with("print_abort_"))
        .map(str::to_owned)
        .collect();
    let all: BTreeSet<String> = METRICS.iter().map(|name| name.to_string()).collect();
    assert_eq!(recorded, all);
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            r#"sum by (le, operation) (rate(print_abort_graph_request_duration_seconds_bucket{instance=~"$instance",status!="2xx"}[$__rate_interval])) / on (x) group_left foo_total offset 5m > 0.5"#
        ),
        [
            "print_abort_graph_request_duration_seconds_bucket",
            "foo_total"
        ]
    );
    assert_eq!(
        metric_names("absent(print_abort_paused)"),
        ["print_abort_paused"]
    );
}

#[test]
fn the_grafana_dashboard_shows_every_exported_metric_and_nothing_else() {
    let file = "docs/grafana-dashboard.json";
    let dashboard: Value = serde_json::from_str(&read(file)).expect("the dashboard is JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
    let mut queries = Vec::new();
    strings_under("expr", &dashboard["panels"], &mut queries);
    let mut used = check_expressions(file, &queries);
    // Template variables query label values of a metric: `label_values(metric, label)`.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["definition"].as_str() {
            let metric = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or_else(|| panic!("{file}: unexpected variable query {query}"));
            assert!(exported(metric), "{file}: {metric} is not exported");
            used.insert(base(metric));
        }
    }
    let all: BTreeSet<String> = METRICS.iter().map(|name| name.to_string()).collect();
    assert_eq!(used, all, "the dashboard shows every metric");
}

#[test]
fn the_prometheus_rules_use_only_exported_metrics() {
    let file = "docs/prometheus-rules.yaml";
    let rules: Value = serde_norway::from_str(&read(file)).expect("valid YAML");
    let mut queries = Vec::new();
    strings_under("expr", &rules, &mut queries);
    check_expressions(file, &queries);
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert!(rule["alert"].is_string(), "{rule}");
            assert!(rule["annotations"]["summary"].is_string(), "{rule}");
        }
    }
}

#[test]
fn the_operations_guide_lists_every_metric() {
    let guide = read("docs/OPERATIONS.md");
    let listed: BTreeSet<String> = guide
        .lines()
        .filter_map(|line| line.strip_prefix("| `print_abort_"))
        .map(|rest| format!("print_abort_{}", rest.split('`').next().unwrap_or_default()))
        .map(|name| name.split('{').next().unwrap_or_default().to_owned())
        .collect();
    let all: BTreeSet<String> = METRICS.iter().map(|name| name.to_string()).collect();
    assert_eq!(listed, all, "the metrics table of docs/OPERATIONS.md");
}

/// `promtool check metrics`, Prometheus's own linter, accepts what `/metrics` serves: every
/// metric has its `# HELP`, the series the alerts read exist from the start, and the build
/// and process metrics are there.
#[tokio::test]
async fn promtool_accepts_the_metrics_endpoint() {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    if std::process::Command::new(&promtool)
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "promtool (Prometheus's linter) is not installed. It is in Debian's prometheus \
             package; .ci/run installs it. By hand: apt-get download prometheus && dpkg-deb -x \
             prometheus_*.deb /tmp/prometheus && cp /tmp/prometheus/usr/bin/promtool \
             /usr/local/bin/ (or set PROMTOOL to its path)"
        );
    }
    let server = graph_with_token().await;
    abort_mock().respond_with(no_content()).mount(&server).await;
    let mut settings = test_settings(&server);
    settings.http.listen = Some(([127, 0, 0, 1], 0).into());
    let mut app = TestApp::spawn(server, settings).await;
    app.wait_for_health("ready", |h| h.ready()).await;
    let address = app.health.http_address().expect("the endpoints listen");
    app.outcome_of(&command("p", "promtool")).await;

    let (status, metrics) = crate::operations::get(address, "/metrics").await;
    assert_eq!(status, 200);
    let mut check = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    let mut stdin = check.stdin.take().expect("promtool's stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, metrics.as_bytes())
        .await
        .expect("the metrics reach promtool");
    drop(stdin);
    let output = check.wait_with_output().await.expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Every family shown has its help text (promtool insists too); per-tenant families
    // appear with their first tenant.
    for family in metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
    {
        let name = family.split(' ').next().unwrap_or_default();
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{metrics}"
        );
    }
    for series in [
        "print_abort_paused 0",
        "print_abort_broker_reconnects_total 0",
        "print_abort_delivery_limit_total 0",
        r#"print_abort_commands_total{outcome="failed",error_kind="unauthorized"} 0"#,
    ] {
        assert!(metrics.contains(series), "no {series}:\n{metrics}");
    }
    let build = metrics
        .lines()
        .find(|line| line.starts_with("print_abort_build_info{"))
        .unwrap_or_else(|| panic!("no build info:\n{metrics}"));
    assert!(
        build.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION")))
            && build.contains("commit=\"")
            && build.ends_with(" 1"),
        "{build}"
    );
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            metrics
                .lines()
                .any(|line| line.starts_with(&format!("{process} "))),
            "no {process}:\n{metrics}"
        );
    }
    app.finish().await;
}
