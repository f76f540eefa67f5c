//! The deployment files agree with each other and with the code, without
//! Docker: docker-compose.yml's services, paths and ports, Prometheus's
//! targets and rules, Grafana's provisioning and dashboard queries (only
//! metrics that telemetry.rs registers), and config/production.example.toml
//! (it loads).
//!
//! There is no YAML crate among the dependencies, so the YAML files are read
//! by a small line-based parser that understands the regular style they are
//! written in: two-space indentation, block lists and mappings, one setting
//! per line.

use anyhow::{Context, Result, bail, ensure};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> Result<String> {
    std::fs::read_to_string(root().join(rel)).with_context(|| format!("reading {rel}"))
}

// --- a minimal YAML reader ---------------------------------------------------

/// One meaningful line: indentation, and the text without comments.
struct Line<'a> {
    indent: usize,
    text: &'a str,
    number: usize,
}

/// Non-blank, non-comment lines. Tabs in indentation are rejected (YAML
/// forbids them); an unquoted ` #` starts a trailing comment.
fn lines(src: &str) -> Result<Vec<Line<'_>>> {
    let mut out = Vec::new();
    for (i, raw) in src.lines().enumerate() {
        let trimmed = raw.trim_start_matches(' ');
        if trimmed.starts_with('\t') {
            bail!("line {}: tab in indentation", i + 1);
        }
        let text = strip_comment(trimmed).trim_end();
        if text.is_empty() || text == "---" {
            continue;
        }
        out.push(Line {
            indent: raw.len() - trimmed.len(),
            text,
            number: i + 1,
        });
    }
    Ok(out)
}

/// Cuts a trailing ` # comment` (or a whole-line comment) outside quotes.
fn strip_comment(s: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev == ' ' => return &s[..i],
            None => {}
        }
        prev = c;
    }
    s
}

/// Removes one pair of matching quotes.
fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return &s[1..s.len() - 1];
        }
    }
    s
}

/// `key: value` (value possibly empty), or None for a list item or scalar.
fn key_value(text: &str) -> Option<(&str, &str)> {
    if text.starts_with("- ") || text == "-" {
        return None;
    }
    let (k, v) = if let Some(k) = text.strip_suffix(':') {
        (k, "")
    } else {
        let i = text.find(": ")?;
        (&text[..i], &text[i + 2..])
    };
    Some((unquote(k), v.trim()))
}

/// The items of an inline flow list `["a", "b"]` (no nesting, no commas
/// inside items).
fn flow_list(v: &str) -> Option<Vec<String>> {
    let inner = v.trim().strip_prefix('[')?.strip_suffix(']')?;
    Some(
        inner
            .split(',')
            .map(|s| unquote(s).to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// What the tests need of one compose service.
#[derive(Debug, Default)]
struct Service {
    /// `build:` settings (context, dockerfile, target), or `context` alone
    /// for the short form.
    build: BTreeMap<String, String>,
    /// `volumes:` items, as written.
    volumes: Vec<String>,
    /// `environment:` in either form (map or `- KEY=value` list).
    environment: BTreeMap<String, String>,
    /// `command:` as a flow list or a plain string split at spaces.
    command: Vec<String>,
}

/// Reads the `services:` of a compose file: service names at two spaces,
/// their keys at four, and the entries of `build`, `volumes`,
/// `environment` at six.
fn compose_services(src: &str) -> Result<BTreeMap<String, Service>> {
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    let mut in_services = false;
    let mut current: Option<String> = None;
    let mut section = String::new();
    for l in lines(src)? {
        let at = || format!("docker-compose.yml:{}: {:?}", l.number, l.text);
        match l.indent {
            0 => {
                let (k, _) = key_value(l.text).with_context(at)?;
                in_services = k == "services";
                current = None;
            }
            _ if !in_services => {}
            2 => {
                let (name, v) = key_value(l.text).with_context(at)?;
                ensure!(v.is_empty(), "{}: a service must be a mapping", at());
                services.insert(name.to_string(), Service::default());
                current = Some(name.to_string());
            }
            4 => {
                let s = services
                    .get_mut(current.as_deref().with_context(at)?)
                    .with_context(at)?;
                let (k, v) = key_value(l.text).with_context(at)?;
                section = k.to_string();
                match k {
                    "build" if !v.is_empty() => {
                        s.build.insert("context".into(), unquote(v).to_string());
                    }
                    "command" if !v.is_empty() => {
                        s.command = match flow_list(v) {
                            Some(list) => list,
                            None => unquote(v).split_whitespace().map(String::from).collect(),
                        };
                    }
                    "volumes" | "environment" => {
                        ensure!(v.is_empty(), "{}: write {k} as a block", at());
                    }
                    _ => {}
                }
            }
            6 => {
                let s = services
                    .get_mut(current.as_deref().with_context(at)?)
                    .with_context(at)?;
                let item = l.text.strip_prefix("- ").map(unquote);
                match (section.as_str(), item) {
                    ("volumes", Some(v)) => s.volumes.push(v.to_string()),
                    ("environment", Some(e)) => {
                        let (k, v) = e.split_once('=').unwrap_or((e, ""));
                        s.environment.insert(k.to_string(), v.to_string());
                    }
                    ("environment", None) => {
                        let (k, v) = key_value(l.text).with_context(at)?;
                        s.environment.insert(k.to_string(), unquote(v).to_string());
                    }
                    ("build", None) => {
                        let (k, v) = key_value(l.text).with_context(at)?;
                        s.build.insert(k.to_string(), unquote(v).to_string());
                    }
                    ("volumes" | "build", _) => bail!("{}: unexpected entry", at()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(services)
}

/// The items of the block list under `key:` (anywhere in the file), or of
/// an inline flow list after it; one list per occurrence of the key.
fn yaml_lists(src: &str, key: &str) -> Result<Vec<Vec<String>>> {
    let ls = lines(src)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < ls.len() {
        let l = &ls[i];
        let text = l.text.strip_prefix("- ").unwrap_or(l.text);
        let indent = l.indent + (l.text.len() - text.len());
        if let Some((k, v)) = key_value(text)
            && k == key
        {
            if let Some(list) = flow_list(v) {
                out.push(list);
            } else {
                ensure!(v.is_empty(), "line {}: {key} is not a list", l.number);
                let mut items = Vec::new();
                while i + 1 < ls.len() && ls[i + 1].indent >= indent {
                    let next = &ls[i + 1];
                    match next.text.strip_prefix("- ") {
                        Some(item) if next.indent >= indent => {
                            items.push(unquote(item).to_string())
                        }
                        _ => break,
                    }
                    i += 1;
                }
                out.push(items);
            }
        }
        i += 1;
    }
    Ok(out)
}

/// The values of every `key: value` line (any depth, list items included).
fn yaml_values(src: &str, key: &str) -> Result<Vec<String>> {
    Ok(lines(src)?
        .iter()
        .filter_map(|l| key_value(l.text.strip_prefix("- ").unwrap_or(l.text)))
        .filter(|(k, v)| *k == key && !v.is_empty())
        .map(|(_, v)| unquote(v).to_string())
        .collect())
}

/// The values of `key:`, where a `|` or `>` block scalar is joined from the
/// more-indented lines below it.
fn yaml_scalars(src: &str, key: &str) -> Result<Vec<String>> {
    let ls = lines(src)?;
    let mut out = Vec::new();
    for (i, l) in ls.iter().enumerate() {
        let text = l.text.strip_prefix("- ").unwrap_or(l.text);
        let Some((k, v)) = key_value(text) else {
            continue;
        };
        if k != key {
            continue;
        }
        if v.starts_with('|') || v.starts_with('>') {
            let block: Vec<&str> = ls[i + 1..]
                .iter()
                .take_while(|n| n.indent > l.indent)
                .map(|n| n.text)
                .collect();
            out.push(block.join("\n"));
        } else {
            out.push(unquote(v).to_string());
        }
    }
    Ok(out)
}

// --- PromQL metric names -------------------------------------------------------

/// Metric names an expression selects: identifiers that are not functions,
/// keywords, grouping labels, label matchers, durations or Grafana
/// variables.
fn metric_names(expr: &str) -> Result<BTreeSet<String>> {
    const KEYWORDS: [&str; 8] = [
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let c: Vec<char> = expr.chars().collect();
    let ident = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its match, stepping over strings.
    let skip = |i: &mut usize, open: char, close: char| -> Result<()> {
        let mut depth = 0;
        let mut quote: Option<char> = None;
        while *i < c.len() {
            let ch = c[*i];
            match quote {
                Some(_) if ch == '\\' => *i += 1,
                Some(q) if ch == q => quote = None,
                Some(_) => {}
                None if ch == '"' || ch == '\'' || ch == '`' => quote = Some(ch),
                None if ch == open => depth += 1,
                None if ch == close => {
                    depth -= 1;
                    if depth == 0 {
                        *i += 1;
                        return Ok(());
                    }
                }
                None => {}
            }
            *i += 1;
        }
        bail!("unbalanced {open}{close} in {expr:?}")
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '{' {
            skip(&mut i, '{', '}')?;
        } else if ch == '[' {
            skip(&mut i, '[', ']')?;
        } else if ch == '"' || ch == '\'' || ch == '`' {
            // A string outside braces (label_replace arguments and the like).
            let q = ch;
            i += 1;
            while i < c.len() && c[i] != q {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '$' || ch.is_ascii_digit() || ch == '.' {
            // Grafana variables, numbers and durations.
            i += 1;
            while i < c.len() && (ident(c[i]) || c[i] == '.') {
                i += 1;
            }
        } else if ident(ch) {
            let start = i;
            while i < c.len() && ident(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            // A function call, or an aggregation with its grouping first
            // (`sum by (le) (…)`).
            let next: String = c[j..].iter().take_while(|&&x| ident(x)).collect();
            let call = (j < c.len() && c[j] == '(') || next == "by" || next == "without";
            if GROUPING.contains(&word.as_str()) {
                if call {
                    i = j;
                    skip(&mut i, '(', ')')?;
                }
            } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    Ok(names)
}

/// Checks that every metric `expr` selects is registered in telemetry.rs
/// (searched as the quoted name; histogram series are reduced to their
/// metric), apart from `allowed` (e.g. Prometheus's own `up`).
fn check_metrics(expr: &str, telemetry: &str, allowed: &[&str], what: &str) -> Result<()> {
    for name in metric_names(expr)? {
        if allowed.contains(&name.as_str()) {
            continue;
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        ensure!(
            telemetry.contains(&format!("\"{name}\""))
                || telemetry.contains(&format!("\"{base}\"")),
            "{what}: {name:?} in {expr:?} is not a metric registered in telemetry.rs"
        );
    }
    Ok(())
}

fn telemetry_source() -> Result<String> {
    read("crates/idlink/src/service/telemetry.rs")
}

#[test]
fn metric_names_skips_everything_but_metrics() -> Result<()> {
    let e = r#"histogram_quantile(0.99, sum by (le) (rate(idlink_a_bucket{instance=~"$instance", x="a{b}"}[$__rate_interval]))) / on (instance) group_left (t) (time() - idlink_b offset 5m) and bool 1e3"#;
    let names: Vec<String> = metric_names(e)?.into_iter().collect();
    assert_eq!(names, ["idlink_a_bucket", "idlink_b"]);
    let e = "deriv((sum without (p) (idlink_c))[10m:1m]) > 0 unless up == 0";
    let names: Vec<String> = metric_names(e)?.into_iter().collect();
    assert_eq!(names, ["idlink_c", "up"]);
    assert!(metric_names("sum(x{a=\"b\"").is_err());
    Ok(())
}

#[test]
fn yaml_reader_reads_the_supported_style() -> Result<()> {
    let src = r#"
# comment
services:
  a:
    build: .
    command: run --config /c.toml   # trailing comment
    environment:
      - IDLINK_HTTP_ADDR=0.0.0.0:1
    volumes:
      - "./x:/y:ro"
  b:
    build:
      context: sub
      dockerfile: D
    command: ["x", "y"]
    environment:
      IDLINK_HTTP_ADDR: "0.0.0.0:2"
    depends_on:
      a:
        condition: service_healthy
other:
  - 1
"#;
    let s = compose_services(src)?;
    assert_eq!(s.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(s["a"].build["context"], ".");
    assert_eq!(s["a"].command, ["run", "--config", "/c.toml"]);
    assert_eq!(s["a"].environment["IDLINK_HTTP_ADDR"], "0.0.0.0:1");
    assert_eq!(s["a"].volumes, ["./x:/y:ro"]);
    assert_eq!(s["b"].build["dockerfile"], "D");
    assert_eq!(s["b"].command, ["x", "y"]);
    assert_eq!(s["b"].environment["IDLINK_HTTP_ADDR"], "0.0.0.0:2");
    let p = "rule_files:\n  - a.yml\nx:\n  - targets:\n      - \"h:1\"\n      - 'h:2'\n  - targets: [\"h:3\"]\n";
    assert_eq!(yaml_lists(p, "rule_files")?, [vec!["a.yml".to_string()]]);
    assert_eq!(
        yaml_lists(p, "targets")?,
        [vec!["h:1".to_string(), "h:2".into()], vec!["h:3".into()]]
    );
    let r = "  - alert: A\n    expr: |\n      x\n      > 1\n    for: 1m\n  - expr: y\n";
    assert_eq!(yaml_scalars(r, "expr")?, ["x\n> 1", "y"]);
    Ok(())
}

// --- docker-compose.yml ---------------------------------------------------------

fn compose() -> Result<BTreeMap<String, Service>> {
    compose_services(&read("docker-compose.yml")?)
}

/// Names of the idlink service instances.
fn idlink_services(services: &BTreeMap<String, Service>) -> Vec<&String> {
    services
        .iter()
        .filter(|(_, s)| s.environment.contains_key("IDLINK_HTTP_ADDR"))
        .map(|(n, _)| n)
        .collect()
}

/// Splits a short-syntax volume into host and container paths; None for a
/// named volume.
fn bind_mount(v: &str) -> Result<Option<(String, String)>> {
    let parts: Vec<&str> = v.split(':').collect();
    ensure!(
        parts.len() >= 2,
        "volume {v:?}: use the short syntax host:container[:mode]"
    );
    let host = parts[0];
    if !(host.starts_with("./") || host.starts_with("../") || host.starts_with('/') || host == ".")
    {
        return Ok(None);
    }
    Ok(Some((host.to_string(), parts[1].to_string())))
}

#[test]
fn compose_has_every_service() -> Result<()> {
    let services = compose()?;
    for name in ["kafka", "idlink-1", "simulator", "prometheus", "grafana"] {
        ensure!(services.contains_key(name), "service {name} is missing");
    }
    // The idlink instances are the services with IDLINK_HTTP_ADDR: one
    // owner; the demo runs no standby.
    let idlink = idlink_services(&services);
    ensure!(
        idlink == ["idlink-1"],
        "expected exactly one idlink instance, found {idlink:?}"
    );
    Ok(())
}

#[test]
fn compose_host_paths_exist() -> Result<()> {
    let mut checked = 0;
    for (name, s) in compose()? {
        for v in &s.volumes {
            if let Some((host, _)) = bind_mount(v)? {
                let path = root().join(&host);
                ensure!(path.exists(), "{name}: volume {v:?}: {host} does not exist");
                checked += 1;
            }
        }
    }
    ensure!(checked >= 5, "only {checked} bind mounts found");
    Ok(())
}

#[test]
fn compose_builds_exist() -> Result<()> {
    let mut built = 0;
    for (name, s) in compose()? {
        let Some(context) = s.build.get("context") else {
            continue;
        };
        let dir = root().join(context);
        ensure!(
            dir.is_dir(),
            "{name}: build context {context} is not a directory"
        );
        let dockerfile = s
            .build
            .get("dockerfile")
            .map_or("Dockerfile", String::as_str);
        let path = dir.join(dockerfile);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{name}: dockerfile {}", path.display()))?;
        if let Some(target) = s.build.get("target") {
            let stage = text.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() >= 4
                    && w[0].eq_ignore_ascii_case("FROM")
                    && w[w.len() - 2].eq_ignore_ascii_case("AS")
                    && w[w.len() - 1] == target
            });
            ensure!(stage, "{name}: {dockerfile} has no stage {target:?}");
        }
        built += 1;
    }
    ensure!(built >= 2, "only {built} services are built");
    Ok(())
}

#[test]
fn idlink_config_is_mounted() -> Result<()> {
    let services = compose()?;
    for name in idlink_services(&services) {
        let s = &services[name];
        let at = s
            .command
            .iter()
            .position(|a| a == "--config")
            .with_context(|| format!("{name}: command has no --config"))?;
        let config = s.command.get(at + 1).context("--config without a path")?;
        let mut found = false;
        for v in &s.volumes {
            if let Some((host, container)) = bind_mount(v)?
                && let Ok(rest) = Path::new(config).strip_prefix(&container)
            {
                let file = root().join(host).join(rest);
                ensure!(
                    file.is_file(),
                    "{name}: {config} is {} on the host, which does not exist",
                    file.display()
                );
                found = true;
            }
        }
        ensure!(found, "{name}: no volume holds {config}");
    }
    Ok(())
}

#[test]
fn idlink_ports_match_prometheus_targets() -> Result<()> {
    let services = compose()?;
    let prometheus = read("config/prometheus.yml")?;
    let targets: Vec<String> = yaml_lists(&prometheus, "targets")?.concat();
    ensure!(!targets.is_empty(), "config/prometheus.yml has no targets");
    for name in idlink_services(&services) {
        let addr = &services[name].environment["IDLINK_HTTP_ADDR"];
        let (_, port) = addr
            .rsplit_once(':')
            .with_context(|| format!("{name}: IDLINK_HTTP_ADDR {addr:?} has no port"))?;
        let target = targets
            .iter()
            .find(|t| t.rsplit_once(':').is_some_and(|(h, _)| h == name.as_str()))
            .with_context(|| format!("config/prometheus.yml does not scrape {name}"))?;
        ensure!(
            target.ends_with(&format!(":{port}")),
            "{name} listens on port {port} (IDLINK_HTTP_ADDR), Prometheus scrapes {target}"
        );
    }
    Ok(())
}

#[test]
fn prometheus_rule_files_exist_and_are_mounted() -> Result<()> {
    let prometheus = read("config/prometheus.yml")?;
    let rule_files: Vec<String> = yaml_lists(&prometheus, "rule_files")?.concat();
    ensure!(
        !rule_files.is_empty(),
        "config/prometheus.yml has no rule_files"
    );
    let services = compose()?;
    let mounts: Vec<(String, String)> = services["prometheus"]
        .volumes
        .iter()
        .filter_map(|v| bind_mount(v).transpose())
        .collect::<Result<_>>()?;
    let (_, config_in_container) = mounts
        .iter()
        .find(|(h, _)| Path::new(h) == Path::new("./config/prometheus.yml"))
        .context("prometheus does not mount ./config/prometheus.yml")?;
    let container_dir = Path::new(config_in_container)
        .parent()
        .context("prometheus.yml mounted at /")?;
    for r in &rule_files {
        ensure!(
            root().join("config").join(r).is_file(),
            "rule file config/{r} does not exist"
        );
        // Relative rule files resolve beside prometheus.yml in the container.
        let want = container_dir.join(r);
        ensure!(
            mounts
                .iter()
                .any(|(h, c)| Path::new(c) == want
                    && root().join(h) == root().join("config").join(r)),
            "rule file {r} is not mounted at {}",
            want.display()
        );
    }
    Ok(())
}

#[test]
fn alert_rules_use_registered_metrics() -> Result<()> {
    let alerts = read("config/alerts.yml")?;
    let telemetry = telemetry_source()?;
    let names = yaml_values(&alerts, "alert")?;
    for want in [
        "IdlinkNotReady",
        "IdlinkConsumerLagGrowing",
        "IdlinkDeadLetterRateHigh",
        "IdlinkRestoreStuck",
        "IdlinkSnapshotsStalled",
    ] {
        ensure!(names.iter().any(|n| n == want), "alert {want} is missing");
    }
    let exprs = yaml_scalars(&alerts, "expr")?;
    ensure!(
        exprs.len() == names.len(),
        "{} alerts but {} expressions",
        names.len(),
        exprs.len()
    );
    for e in &exprs {
        check_metrics(e, &telemetry, &["up"], "config/alerts.yml")?;
    }
    Ok(())
}

// --- Grafana --------------------------------------------------------------------

/// Every string under an `expr` key.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// Every datasource uid the dashboard refers to (Grafana's own excepted).
fn datasource_uids(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(ds) = m.get("datasource")
                && let Some(uid) = ds.get("uid").and_then(|u| u.as_str())
                && ds.get("type").and_then(|t| t.as_str()) != Some("grafana")
            {
                out.insert(uid.to_string());
            }
            m.values().for_each(|x| datasource_uids(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| datasource_uids(x, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_use_registered_metrics() -> Result<()> {
    let text = read("config/grafana/dashboards/idlink.json")?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).context("config/grafana/dashboards/idlink.json")?;
    let telemetry = telemetry_source()?;
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    ensure!(
        all.len() >= 15,
        "only {} queries in the dashboard",
        all.len()
    );
    let mut used = BTreeSet::new();
    for e in &all {
        check_metrics(e, &telemetry, &[], "idlink.json")?;
        used.extend(metric_names(e)?);
    }
    // The dashboard covers the metrics the brief lists.
    for m in [
        "idlink_events_consumed_total",
        "idlink_dead_letters_total",
        "idlink_late_events_total",
        "idlink_consumer_lag",
        "idlink_ingest_to_publish_seconds_bucket",
        "idlink_sign_in_to_publish_seconds_bucket",
        "idlink_graph_devices",
        "idlink_graph_accounts",
        "idlink_graph_links",
        "idlink_links_created_total",
        "idlink_links_removed_total",
        "idlink_watermark_seconds",
        "idlink_producer_queue_depth",
        "idlink_reorder_buffer_events",
        "idlink_snapshot_duration_seconds_bucket",
        "idlink_snapshot_bytes",
        "idlink_state_restore_progress",
        "idlink_ready",
        "idlink_privacy_acks_total",
    ] {
        ensure!(used.contains(m), "no dashboard panel shows {m}");
    }
    // Its datasource is the provisioned one.
    let provisioned = std::fs::read_dir(root().join("config/grafana/provisioning/datasources"))?
        .map(|e| Ok(std::fs::read_to_string(e?.path())?))
        .collect::<Result<Vec<String>>>()?
        .iter()
        .map(|t| yaml_values(t, "uid"))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let mut uids = BTreeSet::new();
    datasource_uids(&dashboard, &mut uids);
    for uid in uids {
        ensure!(
            provisioned.contains(&uid),
            "dashboard datasource uid {uid:?} is not provisioned ({provisioned:?})"
        );
    }
    Ok(())
}

#[test]
fn grafana_provisioning_matches_its_mounts() -> Result<()> {
    let services = compose()?;
    let mounts: Vec<(String, String)> = services["grafana"]
        .volumes
        .iter()
        .filter_map(|v| bind_mount(v).transpose())
        .collect::<Result<_>>()?;
    let dashboards = mounts
        .iter()
        .find(|(h, _)| h.trim_end_matches('/') == "./config/grafana/dashboards")
        .context("grafana does not mount ./config/grafana/dashboards")?;
    let provider = read("config/grafana/provisioning/dashboards/idlink.yml")?;
    let paths = yaml_values(&provider, "path")?;
    ensure!(
        paths.iter().any(|p| p == &dashboards.1),
        "the dashboard provider reads {paths:?}, the dashboards are mounted at {}",
        dashboards.1
    );
    for sub in ["datasources", "dashboards"] {
        let host = format!("./config/grafana/provisioning/{sub}");
        let container = format!("/etc/grafana/provisioning/{sub}");
        ensure!(
            mounts.iter().any(|(h, c)| h == &host && c == &container)
                || mounts
                    .iter()
                    .any(|(h, c)| h == "./config/grafana/provisioning"
                        && c == "/etc/grafana/provisioning"),
            "grafana does not mount {host} at {container}"
        );
    }
    let urls = yaml_values(
        &read("config/grafana/provisioning/datasources/prometheus.yml")?,
        "url",
    )?;
    ensure!(
        urls == ["http://prometheus:9090"],
        "datasource url {urls:?}"
    );
    Ok(())
}

// --- config/production.example.toml -------------------------------------------------

fn production_example() -> Result<toml::Table> {
    Ok(read("config/production.example.toml")?.parse()?)
}

#[test]
fn production_example_has_known_sections() -> Result<()> {
    let table = production_example()?;
    let known = [
        "input",
        "time",
        "addresses",
        "linking",
        "bots",
        "privacy",
        "kafka",
        "service",
        "http",
        "log",
    ];
    for k in table.keys() {
        ensure!(known.contains(&k.as_str()), "unknown section [{k}]");
    }
    // Every section of default.toml is documented.
    let default: toml::Table = read("config/default.toml")?.parse()?;
    for k in default
        .keys()
        .map(String::as_str)
        .chain(["kafka", "service", "http", "log"])
    {
        ensure!(table.contains_key(k), "section [{k}] is missing");
    }
    let kafka = table["kafka"].as_table().context("[kafka]")?;
    assert_eq!(kafka["replication_factor"].as_integer(), Some(3));
    let common = kafka["common"].as_table().context("[kafka.common]")?;
    assert_eq!(common["security.protocol"].as_str(), Some("SASL_SSL"));
    assert_eq!(common["sasl.mechanisms"].as_str(), Some("SCRAM-SHA-512"));
    assert_eq!(table["http"]["addr"].as_str(), Some("0.0.0.0:9464"));
    assert_eq!(table["log"]["format"].as_str(), Some("json"));
    Ok(())
}

/// The pass-through librdkafka settings are property names librdkafka
/// accepts (creating a client checks them; it does not connect yet).
#[test]
fn production_example_kafka_settings_are_librdkafka_properties() -> Result<()> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;
    let table = production_example()?;
    let kafka = table["kafka"].as_table().context("[kafka]")?;
    let section = |name: &str| -> Result<Vec<(String, String)>> {
        let Some(t) = kafka.get(name) else {
            return Ok(Vec::new());
        };
        t.as_table()
            .with_context(|| format!("[kafka.{name}]"))?
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .with_context(|| format!("kafka.{name}.{k:?} must be a string"))?;
                Ok((k.clone(), v.to_string()))
            })
            .collect()
    };
    let base = || {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:9");
        c
    };
    let mut consumer = base();
    consumer.set("group.id", "compose-test");
    for (k, v) in section("common")?.into_iter().chain(section("consumer")?) {
        consumer.set(k, v);
    }
    let _: BaseConsumer = consumer.create().context("kafka.common + kafka.consumer")?;
    let mut producer = base();
    for (k, v) in section("common")?.into_iter().chain(section("producer")?) {
        producer.set(k, v);
    }
    let _: BaseProducer = producer.create().context("kafka.common + kafka.producer")?;
    Ok(())
}

/// `idlink run` accepts the example: it parses and validates every section,
/// reads the CIDR files, starts its listener and only then fails, because
/// no broker answers. The copy in a temporary directory differs only in a
/// short connect timeout.
#[test]
fn production_example_loads() -> Result<()> {
    let mut table = production_example()?;
    table
        .get_mut("kafka")
        .and_then(toml::Value::as_table_mut)
        .context("[kafka]")?
        .insert("connect_timeout_seconds".into(), toml::Value::Integer(2));
    let dir = tempfile::tempdir()?;
    let files = table["addresses"]["exclude_cidr_files"]
        .as_array()
        .context("addresses.exclude_cidr_files")?;
    for f in files {
        let f = f.as_str().context("a CIDR file name")?;
        let to = dir.path().join(f);
        std::fs::create_dir_all(to.parent().context("a CIDR file in a directory")?)?;
        std::fs::copy(root().join("config").join(f), &to)
            .with_context(|| format!("config/{f} (relative to the config file)"))?;
    }
    let config = dir.path().join("production.toml");
    std::fs::write(&config, toml::to_string(&table)?)?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_idlink"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("IDLINK_BROKERS", format!("127.0.0.1:{closed}"))
        .env("IDLINK_HTTP_ADDR", "127.0.0.1:0")
        .env("IDLINK_LOG", "error")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .env_remove("IDLINK_GROUP_ID")
        .env_remove("IDLINK_LOG_FORMAT")
        .env_remove("IDLINK_HASH_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("idlink run did not stop within 60 s without a broker");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    ensure!(!status.success(), "idlink run succeeded without a broker");
    ensure!(
        stderr.contains("cannot be reached"),
        "idlink run did not get as far as connecting:\n{stderr}"
    );
    Ok(())
}
