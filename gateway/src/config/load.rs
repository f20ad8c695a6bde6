//! Loading: TOML file → JSON value → `SLUICE_…` env overrides → JSON Schema
//! validation → typed [`Config`] → semantic checks. Every error names the key.

use std::path::Path;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::Config;
use crate::secret::ExposeSecret;

/// Why a config was refused. Each problem names the key path it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config {path} is invalid:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: String, problems: Vec<String> },
}

impl ConfigError {
    /// The individual problems (one line each), for tests and `config check --json`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => problems.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// Load and validate a config file, applying `SLUICE_…` env overrides.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: display.clone(), source })?;
    load_str(&text, &display, std::env::vars())
}

/// Load from TOML text with the given environment (so tests need not touch the
/// process environment).
pub fn load_str(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::Syntax { path: origin.into(), message: e.to_string() })?;
    let mut value =
        serde_json::to_value(table).map_err(|e| ConfigError::Syntax { path: origin.into(), message: e.to_string() })?;
    let mut problems = Vec::new();
    apply_env(&mut value, env, &mut problems);
    let invalid = |problems| ConfigError::Invalid { path: origin.into(), problems };
    if !problems.is_empty() {
        return Err(invalid(problems));
    }

    problems.extend(super::schema::validator().iter_errors(&value).map(describe));
    if !problems.is_empty() {
        problems.sort();
        problems.dedup();
        return Err(invalid(problems));
    }

    let config: Config = serde_json::from_value(value).map_err(|e| invalid(vec![e.to_string()]))?;
    let problems = semantic_checks(&config);
    if problems.is_empty() { Ok(config) } else { Err(invalid(problems)) }
}

/// `SLUICE_SERVER__HTTP_ADDR=0.0.0.0:80` sets `server.http_addr`. The value is read
/// as a TOML literal when it parses as one (`5`, `true`), else as a string.
fn apply_env(root: &mut Value, env: impl IntoIterator<Item = (String, String)>, problems: &mut Vec<String>) {
    const SKIP: &[&str] = &["SLUICE_CONFIG", "SLUICE_STACK_DIR", "SLUICE_PG_BIN", "SLUICE_LOG"];
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("SLUICE_") else { continue };
        if SKIP.contains(&name.as_str()) || !rest.contains("__") || rest.starts_with("TEST") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            problems.push(format!("env {name}: empty key segment"));
            continue;
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .and_then(|v| serde_json::to_value(v).ok())
            .filter(|v| !v.is_object())
            .unwrap_or_else(|| Value::String(raw.clone()));
        let mut cursor = &mut *root;
        for (i, seg) in path.iter().enumerate() {
            let Value::Object(map) = cursor else {
                problems.push(format!("env {name}: `{}` is not a table", path[..i].join(".")));
                break;
            };
            if i + 1 == path.len() {
                map.insert(seg.clone(), parsed.clone());
                break;
            }
            cursor = map.entry(seg.clone()).or_insert_with(|| Value::Object(Default::default()));
        }
    }
}

/// One schema violation as a sentence that names the key path.
fn describe(err: jsonschema::ValidationError<'_>) -> String {
    let at = dotted(err.instance_path().as_str());
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            unexpected.iter().map(|k| format!("unknown key `{}`", join(&at, k))).collect::<Vec<_>>().join("; ")
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or("?");
            format!("missing required key `{}`", join(&at, name))
        }
        ValidationErrorKind::Type { kind } if is_secret(&at) => {
            format!("`{at}`: expected {}, found {}", type_words(kind), json_type(err.instance()))
        }
        ValidationErrorKind::Type { kind } => format!(
            "`{at}`: expected {}, found {} `{}`",
            type_words(kind),
            json_type(err.instance()),
            short(err.instance())
        ),
        _ if is_secret(&at) => {
            // Never echo a secret back, not even a wrong one.
            let shown = err.instance().to_string();
            format!("`{at}`: {}", err.to_string().replace(&shown, "(value hidden)"))
        }
        _ => format!("`{at}`: {err}"),
    }
}

/// Keys whose values are secrets (see `config/sluice.toml`).
fn is_secret(path: &str) -> bool {
    const SECRET_KEYS: &[&str] = &[
        "control.database_url",
        "postgres.admin_url",
        "redis.url",
        "s3.access_key_id",
        "s3.secret_access_key",
        "auth.operator_token",
        "auth.master_key",
        "postgres.replicas",
        "redis.cluster_urls",
    ];
    // A list's items are named `key[i]` or `key.i`.
    SECRET_KEYS.iter().any(|k| path.strip_prefix(k).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '['])))
}

fn type_words(kind: &jsonschema::error::TypeKind) -> String {
    match kind {
        jsonschema::error::TypeKind::Single(t) => t.to_string(),
        jsonschema::error::TypeKind::Multiple(ts) => ts.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" or "),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "table",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s }
}

fn dotted(pointer: &str) -> String {
    let s = pointer.trim_start_matches('/').replace('/', ".");
    if s.is_empty() { "(root)".into() } else { s }
}

fn join(at: &str, key: &str) -> String {
    if at == "(root)" { key.to_owned() } else { format!("{at}.{key}") }
}

/// Checks the schema cannot express (URLs that parse, addresses that resolve).
fn semantic_checks(c: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, addr) in [("server.http_addr", &c.server.http_addr), ("server.pg_addr", &c.server.pg_addr)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("`{key}`: expected host:port like 127.0.0.1:8080, found `{addr}`"));
        }
    }
    for (key, url) in [
        ("control.database_url", c.control.database_url.expose_secret()),
        ("postgres.admin_url", c.postgres.admin_url.expose_secret()),
    ] {
        if let Err(e) = url.parse::<tokio_postgres::Config>() {
            // The URL may hold a password: name the key and the reason only.
            problems.push(format!("`{key}`: not a valid Postgres URL ({e})"));
        }
    }
    for (i, url) in c.postgres.replicas.iter().enumerate() {
        if let Err(e) = url.expose_secret().parse::<tokio_postgres::Config>() {
            problems.push(format!("`postgres.replicas[{i}]`: not a valid Postgres URL ({e})"));
        }
    }
    for (i, u) in c.redis.cluster_urls.iter().enumerate() {
        if !url::Url::parse(u.expose_secret()).is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss")) {
            problems.push(format!("`redis.cluster_urls[{i}]`: expected redis://host:port"));
        }
    }
    match url::Url::parse(c.redis.url.expose_secret()) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") => {}
        _ => problems.push("`redis.url`: expected redis://host:port".into()),
    }
    match url::Url::parse(&c.s3.endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => problems.push(format!("`s3.endpoint`: expected an http(s) URL, found `{}`", c.s3.endpoint)),
    }
    if !c.server.s3_base_domain.is_empty() && !crate::frontend::s3::host::valid_domain(&c.server.s3_base_domain) {
        problems.push(format!(
            "`server.s3_base_domain`: expected a domain name like s3.example.com (no port), or empty, found `{}`",
            c.server.s3_base_domain
        ));
    }
    if !c.server.metrics_addr.is_empty() && c.server.metrics_addr.parse::<std::net::SocketAddr>().is_err() {
        problems.push(format!(
            "`server.metrics_addr`: expected host:port like 10.0.0.5:9090, or empty, found `{}`",
            c.server.metrics_addr
        ));
    }
    for (key, v) in [
        ("postgres.max_work_mem", &c.postgres.max_work_mem),
        ("postgres.max_maintenance_work_mem", &c.postgres.max_maintenance_work_mem),
    ] {
        if crate::sql::rules::memory_kb(v).is_none_or(|kb| kb < 64.0) {
            problems.push(format!("`{key}`: expected a size of at least 64kB like 64MB, found `{v}`"));
        }
    }
    if c.postgres.temp_file_limit != "-1" && crate::sql::rules::memory_kb(&c.postgres.temp_file_limit).is_none() {
        problems.push(format!(
            "`postgres.temp_file_limit`: expected a size like 10GB or -1, found `{}`",
            c.postgres.temp_file_limit
        ));
    }
    if c.quotas.http_burst < 1 {
        problems.push("`quotas.http_burst`: must be at least 1".into());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[control]
database_url = "postgres://u:p@127.0.0.1:5432/c"
[postgres]
admin_url = "postgres://u:p@127.0.0.1:5432/postgres"
[redis]
url = "redis://127.0.0.1:6379"
[s3]
endpoint = "http://127.0.0.1:9000"
access_key_id = "a"
secret_access_key = "b"
[auth]
operator_token = "0123456789abcdef"
master_key = "0123456789abcdef0123456789abcdef"
"#;

    fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        match load_str(text, "test.toml", env) {
            Ok(_) => vec![],
            Err(e) => e.problems(),
        }
    }

    fn assert_problem(text: &str, needle: &str) {
        let p = problems(text, &[]);
        assert!(p.iter().any(|m| m.contains(needle)), "expected a problem containing {needle:?}, got {p:?}");
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = load_str(GOOD, "t", Vec::new()).expect("valid");
        assert_eq!(c.server.http_addr, "127.0.0.1:8080");
        assert_eq!(c.quotas.pg_pool_size, 10);
        assert_eq!(c.redis.key_prefix, "sluice");
    }

    #[test]
    fn unknown_key_is_named() {
        assert_problem(&format!("{GOOD}\n[server]\nhttp_adr = \"x\"\n"), "unknown key `server.http_adr`");
        assert_problem(&format!("{GOOD}\n[bogus]\n"), "unknown key `bogus`");
    }

    #[test]
    fn wrong_type_is_named_with_expected_and_found() {
        assert_problem(
            &format!("{GOOD}\n[server]\nhttp_addr = 8080\n"),
            "`server.http_addr`: expected string, found integer `8080`",
        );
    }

    #[test]
    fn missing_required_key_is_named() {
        let text = GOOD.replace("access_key_id = \"a\"\n", "");
        assert_problem(&text, "missing required key `s3.access_key_id`");
    }

    #[test]
    fn out_of_range_and_enum_are_named() {
        assert_problem(&GOOD.replace("[control]", "[control]\npool_size = 0"), "`control.pool_size`");
        assert_problem(&format!("{GOOD}\n[log]\nformat = \"xml\"\n"), "`log.format`");
    }

    #[test]
    fn semantic_checks_name_the_key() {
        assert_problem(
            &format!("{GOOD}\n[server]\nhttp_addr = \"nowhere\"\n"),
            "`server.http_addr`: expected host:port",
        );
        assert_problem(&GOOD.replace("http://127.0.0.1:9000", "ftp://x"), "`s3.endpoint`");
        assert_problem(&GOOD.replace("redis://127.0.0.1:6379", "http://x"), "`redis.url`");
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = load_str("[server\n", "bad.toml", Vec::new()).expect_err("invalid TOML");
        assert!(err.to_string().contains("bad.toml is not valid TOML"), "{err}");
    }

    #[test]
    fn secrets_are_never_echoed() {
        let p = problems(&GOOD.replace("0123456789abcdef\"", "hunter2\""), &[]);
        assert!(p.iter().any(|m| m.contains("auth.operator_token")), "{p:?}");
        assert!(p.iter().all(|m| !m.contains("hunter2")), "{p:?}");
    }

    #[test]
    fn env_overrides_win_and_are_typed() {
        let env = [("SLUICE_SERVER__HTTP_ADDR", "0.0.0.0:9999"), ("SLUICE_CONTROL__POOL_SIZE", "3")];
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let c = load_str(GOOD, "t", env).expect("valid");
        assert_eq!(c.server.http_addr, "0.0.0.0:9999");
        assert_eq!(c.control.pool_size, 3);
        assert_eq!(problems(GOOD, &[("SLUICE_CONTROL__POOL_SIZE", "many")]).len(), 1);
    }

    #[test]
    fn checked_in_schema_matches_the_types() {
        assert_eq!(
            crate::config::schema::SCHEMA_JSON,
            crate::config::schema::generate(),
            "config/sluice.schema.json is stale: run `sluice config schema > config/sluice.schema.json`"
        );
    }

    #[test]
    fn shipped_config_files_are_valid() {
        for f in ["sluice.toml", "dev.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config").join(f);
            let text = std::fs::read_to_string(&path).expect("config file present");
            if let Err(e) = load_str(&text, f, Vec::new()) {
                panic!("{f}: {e}");
            }
        }
    }
}
