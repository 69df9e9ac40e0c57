//! `cargo xtask chart`: the Helm chart (`charts/portcullis`) checked with a real `helm`, built
//! from Go modules into `target/tools/` (the Go module proxy is the only way to get it here),
//! and with the real `portcullis` binary.
//!
//! What is checked: `helm lint --strict` on the defaults and every `ci/*-values.yaml`;
//! `helm template` of each, parsed and asserted on (the restricted Pod Security settings, the
//! ports the Service maps, UDP 443 only with HTTP/3, the RBAC rules against docs/rbac.md, the
//! ServiceMonitor selecting the metrics Service, the alerts and the dashboard naming metrics
//! the binary really exports, the Deployment's flags and environment accepted by the binary,
//! the sign-in Secret the chart makes and the ProxyConfig's references to it);
//! `values.schema.json` refusing typos; the chart's CRDs identical to `crds/`; and
//! `deploy/portcullis.yaml` identical to the chart rendered with defaults
//! (`cargo xtask chart --write` regenerates it). `helm install` into a real API server is the
//! end-to-end suite's part (`e2e.rs`). Ends with `chart: N passed, M failed`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _};
use serde_json::Value;

use crate::standalone::{distinct_free_ports, http_get, Standalone};
use crate::util::{self, Checks};

/// The helm release built from the Go module proxy (v4: its go.mod has no replace directives).
const HELM_VERSION: &str = "v4.3.1";
/// The chart, relative to the workspace root.
const CHART: &str = "charts/portcullis";
/// Release name and namespace of every rendering (as in the README's examples).
const RELEASE: &str = "portcullis";
/// The rendered-defaults manifest for `kubectl apply -f`.
const DEPLOY_MANIFEST: &str = "deploy/portcullis.yaml";
/// The monitoring APIs a cluster with the Prometheus Operator advertises.
const MONITORING_APIS: [&str; 2] =
    ["monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"];

/// `helm`, built once into `target/tools/helm-<version>/` with `go install`.
pub fn helm() -> anyhow::Result<PathBuf> {
    let dir = util::root().join("target/tools").join(format!("helm-{HELM_VERSION}"));
    let bin = dir.join("helm");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("\n==> go install helm.sh/helm/v4/cmd/helm@{HELM_VERSION} (once, into {})", dir.display());
    let status = util::Go::new()
        .command()
        .args(["install", &format!("helm.sh/helm/v4/cmd/helm@{HELM_VERSION}")])
        .env("GOBIN", &dir)
        .env("CGO_ENABLED", "0")
        .status()
        .context("running go (is Go installed?)")?;
    ensure!(status.success(), "building helm failed ({status})");
    Ok(bin)
}

/// `cargo xtask chart [--write]`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let helm = helm()?;
    match args.first().map(String::as_str) {
        None => {}
        Some("--write") => {
            let text = deploy_manifest(&helm)?;
            std::fs::write(util::root().join(DEPLOY_MANIFEST), text)?;
            eprintln!("wrote {DEPLOY_MANIFEST}");
            return Ok(());
        }
        Some(other) => bail!("chart: unknown argument {other:?} (only --write)"),
    }
    let portcullis = util::release_binary()?;
    let mut checks = Checks::new("chart");
    let h = &helm;
    checks.check("the chart's crds/ are the repository's crds/", same_crds);
    checks.check("helm lint --strict, defaults and every ci/ values file", || lint(h));
    checks.check("defaults: exactly the expected objects", || default_objects(h));
    checks.check("defaults: Deployment passes the restricted Pod Security Standard", || restricted_pod(h));
    checks.check("defaults: Deployment ports, probes, grace period, spreading", || deployment_shape(h));
    checks.check("defaults: LoadBalancer Service maps TCP 80/443, no UDP; metrics Service", || services(h));
    checks.check("defaults: RBAC rules are exactly docs/rbac.md's table", || rbac_matches_docs(h));
    checks.check("defaults: the binary accepts the Deployment's flags and environment", || {
        binary_accepts_deployment(h, &portcullis)
    });
    checks.check("defaults: the ProxyConfig spec passes `portcullis check`", || proxy_config_valid(h, &portcullis));
    checks.check("http3: UDP 443 on Service and pod, Alt-Svc port, NodePorts, Local policy", || http3(h));
    checks.check("monitoring: ServiceMonitor selects the metrics Service's port", || service_monitor(h));
    checks.check("monitoring: alerts and dashboard use only metrics the binary exports", || {
        monitoring_metrics_exist(h, &portcullis)
    });
    checks.check("monitoring: nothing rendered without the monitoring.coreos.com API", || no_monitoring_api(h));
    checks.check("hardened: HPA, NetworkPolicy, hard anti-affinity, digest, pull secrets, extras", || hardened(h));
    checks.check("signin: the ProxyConfig references the made Secret, whose keys pass `portcullis check`", || {
        sign_in(h, &portcullis)
    });
    checks.check("values.schema.json refuses typos and bad values", || schema_refuses(h));
    checks.check("deploy/portcullis.yaml is the chart rendered with defaults", || deploy_fresh(h));
    checks.finish()
}

fn chart_dir() -> PathBuf {
    util::root().join(CHART)
}

/// `helm <args>` in the chart directory; stdout on success, stderr as the error otherwise.
fn helm_out(helm: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(helm).args(args).current_dir(chart_dir()).output().context("running helm")?;
    if !out.status.success() {
        bail!("helm {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `helm template` with a values file from `ci/` (or the defaults) and extra flags.
fn render(helm: &Path, values: Option<&str>, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["template", RELEASE, ".", "--namespace", RELEASE];
    let file;
    if let Some(v) = values {
        file = format!("ci/{v}-values.yaml");
        args.extend(["--values", &file]);
    }
    args.extend(extra);
    documents(&helm_out(helm, &args)?)
}

/// Every non-empty YAML document of a stream, as JSON values.
fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(de).context("rendered YAML")?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The one object of `kind` (whose name ends with `suffix`).
fn one<'a>(docs: &'a [Value], kind: &str, suffix: &str) -> anyhow::Result<&'a Value> {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with(suffix)))
        .collect();
    ensure!(found.len() == 1, "expected one {kind} named *{suffix}, found {}", found.len());
    Ok(found[0])
}

fn container(docs: &[Value]) -> anyhow::Result<&Value> {
    let c = &one(docs, "Deployment", RELEASE)?["spec"]["template"]["spec"]["containers"][0];
    ensure!(c.is_object(), "the Deployment has no container");
    Ok(c)
}

fn env(c: &Value, name: &str) -> Option<String> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name).and_then(|e| e["value"].as_str()).map(str::to_owned)
}

fn same_crds() -> anyhow::Result<()> {
    let ours = std::fs::read(util::root().join("crds/portcullis.io.yaml"))?;
    let chart = std::fs::read(chart_dir().join("crds/portcullis.io.yaml"))?;
    ensure!(
        ours == chart,
        "charts/portcullis/crds/portcullis.io.yaml differs: cp crds/portcullis.io.yaml charts/portcullis/crds/"
    );
    Ok(())
}

fn ci_values() -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(chart_dir().join("ci"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix("-values.yaml") {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    ensure!(names.len() >= 3, "expected at least 3 ci/*-values.yaml, found {names:?}");
    Ok(names)
}

fn lint(helm: &Path) -> anyhow::Result<()> {
    helm_out(helm, &["lint", "--strict", "."])?;
    for v in ci_values()? {
        let file = format!("ci/{v}-values.yaml");
        helm_out(helm, &["lint", "--strict", ".", "--values", &file])?;
    }
    Ok(())
}

fn default_objects(helm: &Path) -> anyhow::Result<()> {
    let docs = render(helm, None, &[])?;
    let kinds: Vec<String> = docs.iter().map(|d| d["kind"].as_str().unwrap_or("?").to_owned()).collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    let want = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "IngressClass",
        "PodDisruptionBudget",
        "ProxyConfig",
        "Role",
        "RoleBinding",
        "Service",
        "Service",
        "ServiceAccount",
    ];
    ensure!(sorted == want, "rendered kinds {sorted:?}, want {want:?}");
    let class = one(&docs, "IngressClass", "portcullis")?;
    ensure!(class["spec"]["controller"] == "portcullis.io/ingress-controller", "IngressClass controller: {class}");
    ensure!(class["metadata"]["annotations"].is_null(), "not the default class unless asked");
    let pdb = one(&docs, "PodDisruptionBudget", RELEASE)?;
    ensure!(pdb["spec"]["maxUnavailable"] == 1, "PDB: {}", pdb["spec"]);
    Ok(())
}

fn restricted_pod(helm: &Path) -> anyhow::Result<()> {
    let docs = render(helm, None, &[])?;
    let pod = &one(&docs, "Deployment", RELEASE)?["spec"]["template"]["spec"];
    ensure!(pod["securityContext"]["runAsNonRoot"] == true, "pod runAsNonRoot");
    ensure!(pod["securityContext"]["runAsUser"].as_u64().is_some_and(|u| u > 0), "pod runAsUser non-zero");
    ensure!(pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", "seccomp RuntimeDefault");
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        ensure!(pod[key].is_null() || pod[key] == false, "{key} must be off");
    }
    let c = container(&docs)?;
    let sc = &c["securityContext"];
    ensure!(sc["allowPrivilegeEscalation"] == false, "allowPrivilegeEscalation: false");
    ensure!(sc["readOnlyRootFilesystem"] == true, "readOnlyRootFilesystem: true");
    ensure!(sc["capabilities"]["drop"] == serde_json::json!(["ALL"]), "capabilities drop ALL");
    ensure!(sc["capabilities"]["add"].is_null(), "no capability added");
    ensure!(sc["privileged"].is_null() || sc["privileged"] == false, "not privileged");
    for p in c["ports"].as_array().context("ports")? {
        ensure!(p["hostPort"].is_null(), "no hostPort: {p}");
        ensure!(p["containerPort"].as_u64().is_some_and(|n| n > 1024), "unprivileged port: {p}");
    }
    Ok(())
}

fn deployment_shape(helm: &Path) -> anyhow::Result<()> {
    let docs = render(helm, None, &[])?;
    let d = one(&docs, "Deployment", RELEASE)?;
    ensure!(d["spec"]["replicas"] == 2, "2 replicas");
    let pod = &d["spec"]["template"]["spec"];
    let c = container(&docs)?;
    let port = |name: &str, proto: &str| {
        c["ports"].as_array().into_iter().flatten().find(|p| p["name"] == name && p["protocol"] == proto).cloned()
    };
    ensure!(port("https", "TCP").is_some_and(|p| p["containerPort"] == 8443), "https 8443/TCP");
    ensure!(port("http", "TCP").is_some_and(|p| p["containerPort"] == 8080), "http 8080/TCP");
    ensure!(port("quic", "UDP").is_none(), "no UDP without HTTP/3");
    ensure!(env(c, "ADDRESS").as_deref() == Some(":8443"), "ADDRESS pins the https port");
    ensure!(env(c, "HTTP_REDIRECT_ADDRESS").as_deref() == Some(":8080"), "HTTP_REDIRECT_ADDRESS");
    ensure!(env(c, "ADMIN_ADDRESS").as_deref() == Some(":9901"), "admin on the pod IP for the probes");
    ensure!(
        c["livenessProbe"]["httpGet"]["path"] == "/healthz" && c["livenessProbe"]["httpGet"]["port"] == "admin",
        "liveness"
    );
    ensure!(
        c["readinessProbe"]["httpGet"]["path"] == "/readyz" && c["readinessProbe"]["httpGet"]["port"] == "admin",
        "readiness"
    );
    ensure!(
        c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string(),
        "resources"
    );
    // The process's budget plus the preStop sleep fits the grace period, and the process's
    // drain ends 2 s before its budget (main.rs), so the drain is shorter than the period.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().context("terminationGracePeriodSeconds")?;
    let sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap_or(0);
    let process: u64 = env(c, "PORTCULLIS_TERMINATION_GRACE_PERIOD")
        .and_then(|v| v.strip_suffix('s').and_then(|n| n.parse().ok()))
        .context("PORTCULLIS_TERMINATION_GRACE_PERIOD in seconds")?;
    ensure!(sleep > 0 && process + sleep == grace, "grace {grace} = preStop {sleep} + process {process}");
    ensure!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"].is_array(),
        "soft anti-affinity by default"
    );
    let spread = pod["topologySpreadConstraints"].as_array().context("topologySpreadConstraints")?;
    ensure!(spread.iter().any(|t| t["topologyKey"] == "topology.kubernetes.io/zone"), "zone spread");
    ensure!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "rollouts never go below the replicas");
    Ok(())
}

fn services(helm: &Path) -> anyhow::Result<()> {
    let docs = render(helm, None, &[])?;
    let svc = one(&docs, "Service", RELEASE)?;
    ensure!(svc["spec"]["type"] == "LoadBalancer", "LoadBalancer by default");
    let ports: BTreeSet<String> = svc["spec"]["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .map(|p| {
            format!(
                "{}/{}->{}",
                p["port"],
                p["protocol"].as_str().unwrap_or(""),
                p["targetPort"].as_str().unwrap_or("")
            )
        })
        .collect();
    let want: BTreeSet<String> = ["80/TCP->http", "443/TCP->https"].into_iter().map(str::to_owned).collect();
    ensure!(ports == want, "proxy Service ports {ports:?}, want {want:?}");
    ensure!(svc["spec"]["externalTrafficPolicy"].is_null(), "Kubernetes' default policy unless set");
    let metrics = one(&docs, "Service", "-metrics")?;
    ensure!(metrics["spec"]["type"] == "ClusterIP", "metrics Service is ClusterIP");
    ensure!(metrics["spec"]["ports"][0]["targetPort"] == "metrics", "metrics Service targets the metrics port");
    Ok(())
}

/// The RBAC table of docs/rbac.md as (group, resource, verb, scope) rows.
fn documented_rules() -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(util::root().join("docs/rbac.md"))?;
    let mut rows = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (group, resources, verbs) = (cells[1], cells[2], cells[3]);
        let role = if group.contains("(Role") { "Role" } else { "ClusterRole" };
        let group = group.split('`').nth(1).unwrap_or_default();
        let group = if group == "\"\"" { "" } else { group };
        let named = resources.contains(" named ");
        for resource in resources.split("named").next().unwrap_or_default().split(',') {
            let resource = resource.trim().trim_matches('`');
            for verb in verbs.split(',') {
                rows.insert(format!(
                    "{role} {group}/{resource} {}{}",
                    verb.trim(),
                    if named { " (named)" } else { "" }
                ));
            }
        }
    }
    ensure!(rows.len() > 10, "docs/rbac.md: table not found ({} rows)", rows.len());
    Ok(rows)
}

fn rbac_matches_docs(helm: &Path) -> anyhow::Result<()> {
    let docs = render(helm, None, &[])?;
    let mut rendered = BTreeSet::new();
    for kind in ["ClusterRole", "Role"] {
        for rule in one(&docs, kind, RELEASE)?["rules"].as_array().context("rules")? {
            let named = if rule["resourceNames"].is_array() { " (named)" } else { "" };
            for group in rule["apiGroups"].as_array().context("apiGroups")? {
                for resource in rule["resources"].as_array().context("resources")? {
                    for verb in rule["verbs"].as_array().context("verbs")? {
                        rendered.insert(format!(
                            "{kind} {}/{} {}{named}",
                            group.as_str().unwrap_or_default(),
                            resource.as_str().unwrap_or_default(),
                            verb.as_str().unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    let documented = documented_rules()?;
    let extra: Vec<_> = rendered.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&rendered).collect();
    ensure!(
        extra.is_empty() && missing.is_empty(),
        "not in docs/rbac.md: {extra:?}; documented but not granted: {missing:?}"
    );
    Ok(())
}

/// Runs the binary with the Deployment's args and (literal) environment and no cluster: it
/// must get past flag parsing and the environment's settings, to connecting to the API.
fn binary_accepts_deployment(helm: &Path, portcullis: &Path) -> anyhow::Result<()> {
    for values in [None, Some("hardened"), Some("http3-nodeport")] {
        let docs = render(helm, values, &[])?;
        let c = container(&docs)?;
        let args: Vec<&str> = c["args"].as_array().context("args")?.iter().filter_map(Value::as_str).collect();
        let mut cmd = Command::new(portcullis);
        cmd.args(&args).env_clear().env("KUBECONFIG", "/nonexistent/kubeconfig");
        for e in c["env"].as_array().context("env")? {
            if let (Some(name), Some(value)) = (e["name"].as_str(), e["value"].as_str()) {
                cmd.env(name, value);
            }
        }
        let out = cmd.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(1) && stderr.contains("connecting to the Kubernetes API"),
            "{values:?}: portcullis {} exited {:?}: {stderr}",
            args.join(" "),
            out.status.code()
        );
    }
    Ok(())
}

/// The ProxyConfig spec, turned into a standalone file (snake_case keys), passes `check`.
fn proxy_config_valid(helm: &Path, portcullis: &Path) -> anyhow::Result<()> {
    let docs = render(helm, None, &[])?;
    let spec = one(&docs, "ProxyConfig", "global")?["spec"].as_object().context("spec")?;
    ensure!(spec["drainTimeout"] == "10m" && spec["timeoutIdle"] == "5m", "spec follows values.yaml: {spec:?}");
    let file: serde_json::Map<String, Value> = spec.iter().map(|(k, v)| (snake(k), v.clone())).collect();
    let path = std::env::temp_dir().join(format!("portcullis-chart-proxyconfig-{}.yaml", std::process::id()));
    std::fs::write(&path, serde_json::to_string(&file)?)?;
    let out = Command::new(portcullis).args(["check", "--config"]).arg(&path).output()?;
    let _ = std::fs::remove_file(&path);
    ensure!(out.status.success(), "portcullis check: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// `ci/signin-values.yaml`: the chart makes `<release>-sign-in` with a `cookie-secret` and a
/// `signing-key` that the validator takes (the spec, with the Secrets' values inline, passes
/// `portcullis check`), and the ProxyConfig references it and the client's Secret; with
/// `signIn.existingSecret` nothing is made and the references name that Secret.
fn sign_in(helm: &Path, portcullis: &Path) -> anyhow::Result<()> {
    use base64::Engine as _;
    let docs = render(helm, Some("signin"), &[])?;
    let secret = one(&docs, "Secret", "-sign-in")?;
    let name = secret["metadata"]["name"].as_str().context("name")?;
    let decode = |key: &str| -> anyhow::Result<String> {
        let data = secret["data"][key].as_str().with_context(|| format!("the Secret has no {key}"))?;
        Ok(String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data)?)?)
    };
    let cookie = decode("cookie-secret")?;
    let key = decode("signing-key")?;
    ensure!(base64::engine::general_purpose::STANDARD.decode(cookie.trim())?.len() == 32, "32 random bytes");
    ensure!(key.contains("-----BEGIN EC PRIVATE KEY-----"), "a PEM EC key");
    let pc = one(&docs, "ProxyConfig", "global")?;
    let spec = pc["spec"].as_object().context("spec")?;
    let keys = |k: &str| serde_json::json!({"name": name, "namespace": RELEASE, "key": k});
    ensure!(spec["cookieSecretRef"] == keys("cookie-secret"), "cookieSecretRef: {}", spec["cookieSecretRef"]);
    ensure!(spec["signingKeySecretRef"] == keys("signing-key"), "signingKeySecretRef: {}", spec["signingKeySecretRef"]);
    ensure!(
        spec["idpClientSecretRef"]
            == serde_json::json!({"name": "oidc-client", "namespace": RELEASE, "key": "client-secret"}),
        "idpClientSecretRef: {}",
        spec["idpClientSecretRef"]
    );
    ensure!(spec["idpClientId"] == "portcullis" && spec["cookieExpire"] == "8h", "{spec:?}");
    // The spec as a standalone file, the Secrets' values inline.
    let mut file: serde_json::Map<String, Value> =
        spec.iter().filter(|(k, _)| !k.ends_with("Ref")).map(|(k, v)| (snake(k), v.clone())).collect();
    file.insert("idp_client_secret".into(), "client-secret-from-the-cluster".into());
    file.insert("cookie_secret".into(), cookie.into());
    file.insert("signing_key".into(), key.into());
    let path = std::env::temp_dir().join(format!("portcullis-chart-signin-{}.yaml", std::process::id()));
    std::fs::write(&path, serde_json::to_string(&file)?)?;
    let out = Command::new(portcullis).args(["check", "--config"]).arg(&path).output()?;
    let _ = std::fs::remove_file(&path);
    ensure!(out.status.success(), "portcullis check: {}", String::from_utf8_lossy(&out.stderr));
    // The user's own Secret: nothing made, the references name it.
    let docs = render(helm, Some("signin"), &["--set", "signIn.existingSecret=mine"])?;
    ensure!(!docs.iter().any(|d| d["kind"] == "Secret"), "no Secret is made with existingSecret");
    let spec = &one(&docs, "ProxyConfig", "global")?["spec"];
    ensure!(spec["cookieSecretRef"]["name"] == "mine" && spec["signingKeySecretRef"]["name"] == "mine", "{spec}");
    // Off by default.
    let docs = render(helm, None, &[])?;
    ensure!(!docs.iter().any(|d| d["kind"] == "Secret"), "no Secret by default");
    ensure!(one(&docs, "ProxyConfig", "global")?["spec"]["idpClientSecretRef"].is_null(), "no sign-in by default");
    Ok(())
}

/// camelCase to snake_case (a CRD field to its standalone key).
fn snake(k: &str) -> String {
    k.chars().fold(String::new(), |mut s, c| {
        if c.is_ascii_uppercase() {
            s.push('_');
        }
        s.push(c.to_ascii_lowercase());
        s
    })
}

fn http3(helm: &Path) -> anyhow::Result<()> {
    let docs = render(helm, Some("http3-nodeport"), &[])?;
    let svc = one(&docs, "Service", RELEASE)?;
    ensure!(svc["spec"]["type"] == "NodePort" && svc["spec"]["externalTrafficPolicy"] == "Local", "NodePort, Local");
    let ports = svc["spec"]["ports"].as_array().context("ports")?;
    let udp: Vec<&Value> = ports.iter().filter(|p| p["protocol"] == "UDP").collect();
    ensure!(udp.len() == 1, "one UDP port: {ports:?}");
    ensure!(
        udp[0]["port"] == 443 && udp[0]["targetPort"] == "quic" && udp[0]["nodePort"] == 30443,
        "UDP 443: {}",
        udp[0]
    );
    ensure!(ports.iter().any(|p| p["protocol"] == "TCP" && p["nodePort"] == 30443), "TCP 443 NodePort");
    let c = container(&docs)?;
    let quic = c["ports"].as_array().into_iter().flatten().find(|p| p["name"] == "quic").context("quic port")?;
    ensure!(quic["protocol"] == "UDP" && quic["containerPort"] == 8443, "quic is UDP 8443: {quic}");
    ensure!(env(c, "HTTP3_ADVERTISED_PORT").as_deref() == Some("443"), "Alt-Svc names the Service's port");
    let pc = one(&docs, "ProxyConfig", "global")?;
    ensure!(pc["spec"]["codecType"] == "http3", "codecType http3");
    Ok(())
}

fn monitoring_docs(helm: &Path) -> anyhow::Result<Vec<Value>> {
    let mut extra = Vec::new();
    for api in MONITORING_APIS {
        extra.extend(["--api-versions", api]);
    }
    render(helm, Some("monitoring"), &extra)
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

fn service_monitor(helm: &Path) -> anyhow::Result<()> {
    let docs = monitoring_docs(helm)?;
    let sm = one(&docs, "ServiceMonitor", RELEASE)?;
    ensure!(sm["metadata"]["labels"]["release"] == "kube-prometheus-stack", "ServiceMonitor labels from values");
    let selector = &sm["spec"]["selector"]["matchLabels"];
    let selected: Vec<&Value> =
        docs.iter().filter(|d| d["kind"] == "Service" && labels_match(selector, &d["metadata"]["labels"])).collect();
    ensure!(selected.len() == 1, "the selector matches {} Services, want only the metrics one", selected.len());
    let svc = selected[0];
    ensure!(svc["metadata"]["name"] == format!("{RELEASE}-metrics"), "selected {}", svc["metadata"]["name"]);
    let endpoint = &sm["spec"]["endpoints"][0];
    ensure!(endpoint["path"] == "/metrics" && endpoint["interval"] == "15s", "endpoint: {endpoint}");
    let port = svc["spec"]["ports"].as_array().context("ports")?.iter().find(|p| p["name"] == endpoint["port"]);
    let port = port.context("the endpoint's port is not a port of the metrics Service")?;
    let c = container(&docs)?;
    let target = c["ports"].as_array().into_iter().flatten().find(|p| p["name"] == port["targetPort"]);
    ensure!(target.is_some_and(|p| p["containerPort"] == 9902), "targetPort names the container's 9902");
    ensure!(env(c, "METRICS_ADDRESS").as_deref() == Some(":9902"), "the process listens there");
    ensure!(
        sm["spec"]["namespaceSelector"]["matchNames"] == serde_json::json!([RELEASE]),
        "only the release's namespace"
    );
    Ok(())
}

/// Metric names (`portcullis_…`) in a PromQL or JSON text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("portcullis_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn monitoring_metrics_exist(helm: &Path, portcullis: &Path) -> anyhow::Result<()> {
    let docs = monitoring_docs(helm)?;
    let rule = one(&docs, "PrometheusRule", RELEASE)?;
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .context("rules")?
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for want in
        ["PortcullisConfigRejected", "PortcullisNoHealthyUpstream", "PortcullisHighErrorRatio", "PortcullisDrainStuck"]
    {
        ensure!(alerts.contains(&want), "alert {want} missing from {alerts:?}");
    }
    let dashboard = one(&docs, "ConfigMap", "-dashboard")?;
    let json = dashboard["data"]["portcullis.json"].as_str().context("dashboard JSON")?;
    let parsed: Value = serde_json::from_str(json).context("the dashboard is not JSON")?;
    ensure!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10), "dashboard panels");
    ensure!(dashboard["metadata"]["labels"]["grafana_dashboard"] == "1", "Grafana sidecar label");
    let mut used = metric_names(&rule["spec"].to_string());
    used.extend(metric_names(json));
    // What the binary exports: the families in /metrics of a running proxy that has served a
    // request and health-checked its upstream (a family appears with its first series).
    let ports = distinct_free_ports::<5>()?;
    let body = format!(
        "insecure_server: true\nroutes:\n  - from: https://*\n    to: http://127.0.0.1:{}\n    \
         health_checks: [{{interval: 1s, http_health_check: {{path: /}}}}]\n",
        ports[0]
    );
    let served = Standalone::start("chart", portcullis, ports, &body, None)?;
    let answer = http_get(ports[1], "/")?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "a request through the proxy: {answer}");
    let family_names = |scrape: &str| -> BTreeSet<String> {
        scrape
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let exported = loop {
        let exported = family_names(&http_get(ports[4], "/metrics")?);
        if exported.contains("portcullis_upstream_healthy") || std::time::Instant::now() > deadline {
            break exported;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    drop(served);
    ensure!(exported.len() >= 10, "scraped families: {exported:?}");
    let family = |name: &str| {
        ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| exported.contains(*base))
            .map_or_else(|| name.to_owned(), str::to_owned)
    };
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(&family(n))).collect();
    ensure!(unknown.is_empty(), "alerts or dashboard use metrics the binary does not export: {unknown:?}");
    ensure!(used.len() >= 8, "only {used:?} used");
    Ok(())
}

fn no_monitoring_api(helm: &Path) -> anyhow::Result<()> {
    let docs = render(helm, Some("monitoring"), &[])?;
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    ensure!(!kinds.contains(&"ServiceMonitor") && !kinds.contains(&"PrometheusRule"), "rendered {kinds:?}");
    Ok(())
}

fn hardened(helm: &Path) -> anyhow::Result<()> {
    let docs = render(helm, Some("hardened"), &[])?;
    let d = one(&docs, "Deployment", RELEASE)?;
    ensure!(d["spec"]["replicas"].is_null(), "the HPA owns replicas");
    let hpa = one(&docs, "HorizontalPodAutoscaler", RELEASE)?;
    ensure!(hpa["spec"]["minReplicas"] == 3 && hpa["spec"]["maxReplicas"] == 12, "HPA bounds");
    ensure!(hpa["spec"]["metrics"].as_array().is_some_and(|m| m.len() == 2), "CPU and memory targets");
    let np = one(&docs, "NetworkPolicy", RELEASE)?;
    let rules = np["spec"]["ingress"].as_array().context("ingress rules")?;
    ensure!(rules.iter().any(|r| r["ports"][0]["port"] == "metrics" && r["from"].is_array()), "metrics fenced");
    ensure!(!np.to_string().contains("\"admin\""), "admin port never opened");
    let pod = &d["spec"]["template"]["spec"];
    ensure!(pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].is_array(), "hard");
    ensure!(pod["imagePullSecrets"] == serde_json::json!([{"name": "regcred"}]), "pull secrets");
    let c = container(&docs)?;
    ensure!(c["image"].as_str().is_some_and(|i| i.contains("@sha256:")), "digest: {}", c["image"]);
    let args = c["args"].to_string();
    ensure!(
        args.contains("--identity=from-extra-args") && args.contains("--publish-address=ingress.example.com"),
        "{args}"
    );
    ensure!(!args.contains("--publish-service"), "publishAddress wins");
    ensure!(env(c, "TIMEOUT_READ").as_deref() == Some("45s"), "extraEnv");
    ensure!(env(c, "PORTCULLIS_TERMINATION_GRACE_PERIOD").as_deref() == Some("110s"), "120 s less the 10 s sleep");
    let svc = one(&docs, "Service", RELEASE)?;
    ensure!(svc["spec"]["type"] == "ClusterIP", "ClusterIP");
    let class = one(&docs, "IngressClass", "portcullis")?;
    ensure!(class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"] == "true", "default class");
    ensure!(one(&docs, "PodDisruptionBudget", RELEASE)?["spec"]["minAvailable"] == 2, "minAvailable");
    Ok(())
}

fn schema_refuses(helm: &Path) -> anyhow::Result<()> {
    let cases: [(&[&str], &str); 8] = [
        (&["--set", "signIn.enabeld=true"], "enabeld"),
        (&["--set", "signIn.cookie.expire=a fortnight"], "expire"),
        (&["--set", "signIn.enabled=true", "--set", "signIn.clientId=x"], "signIn.providerUrl"),
        (&["--set", "replicas=3"], "replicas"),
        (&["--set", "proxyConfig.spec.codecType=http4"], "codecType"),
        (&["--set", "proxyConfig.spec.drainTimeout=10 minutes"], "drainTimeout"),
        (&["--set", "service.type=Nodeport"], "type"),
        (
            &["--set", "terminationGracePeriodSeconds=8", "--set", "preStopSleepSeconds=5"],
            "terminationGracePeriodSeconds",
        ),
    ];
    for (args, field) in cases {
        let mut all = vec!["template", RELEASE, "."];
        all.extend(args);
        match helm_out(helm, &all) {
            Ok(_) => bail!("helm accepted {args:?}"),
            Err(e) => ensure!(e.to_string().contains(field), "{args:?}: the error does not name {field}: {e}"),
        }
    }
    Ok(())
}

/// The `kubectl apply -f` manifest: a Namespace (enforcing the restricted Pod Security
/// Standard), the CRDs and the chart rendered with defaults.
fn deploy_manifest(helm: &Path) -> anyhow::Result<String> {
    let rendered = helm_out(helm, &["template", RELEASE, ".", "--namespace", RELEASE, "--include-crds"])?;
    Ok(format!(
        "# Generated by `cargo xtask chart --write` from charts/portcullis with its default values:\n\
         # `kubectl apply --server-side -f deploy/portcullis.yaml`. Do not edit; `cargo xtask test`\n\
         # fails when this file is stale.\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {RELEASE}\n  labels:\n    \
         pod-security.kubernetes.io/enforce: restricted\n{rendered}"
    ))
}

fn deploy_fresh(helm: &Path) -> anyhow::Result<()> {
    let want = deploy_manifest(helm)?;
    let have = std::fs::read_to_string(util::root().join(DEPLOY_MANIFEST)).unwrap_or_default();
    ensure!(have == want, "{DEPLOY_MANIFEST} is stale: run `cargo xtask chart --write`");
    documents(&have).map(drop)
}
