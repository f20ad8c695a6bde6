//! A small Rust service on top of Sluice: it stores a note with SQL, indexes a
//! toy embedding of it in a vector collection, and prints the most similar
//! earlier notes. Real services would call an embedding model; here the
//! "embedding" is a letter-frequency vector so the example runs anywhere.
//!
//! ```sh
//! SLUICE_URL=http://127.0.0.1:8080 SLUICE_KEY=slk_... cargo run -p sluice --example rust_notes -- "buy oat milk"
//! ```

use serde_json::{Value, json};

const DIM: usize = 26;

/// Letter frequencies a..z, L2-normalised.
fn embed(text: &str) -> Vec<f32> {
    let mut v = [0f32; DIM];
    for b in text.bytes().filter(u8::is_ascii_alphabetic) {
        v[usize::from(b.to_ascii_lowercase() - b'a')] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter().map(|x| x / norm).collect()
}

struct Sluice {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Sluice {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Result<Value, String> {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!("{path}: HTTP {status}: {}", value["error"]["message"].as_str().unwrap_or("?")))
        }
    }

    async fn sql(&self, sql: &str, params: Value) -> Result<Value, String> {
        self.call(reqwest::Method::POST, "/v1/sql", json!({ "sql": sql, "params": params })).await
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let url = std::env::var("SLUICE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let key = std::env::var("SLUICE_KEY").map_err(|_| "set SLUICE_KEY to a tenant API key".to_string())?;
    let text = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if text.trim().is_empty() {
        return Err("usage: rust_notes <note text>".into());
    }
    let s = Sluice { http: reqwest::Client::new(), url, key };

    s.sql("CREATE TABLE IF NOT EXISTS example_notes (id bigserial PRIMARY KEY, body text NOT NULL)", json!([])).await?;
    // Creating an existing collection with the same definition is a no-op.
    s.call(reqwest::Method::PUT, "/v1/collections/example_notes", json!({ "dimension": DIM })).await?;

    let inserted = s.sql("INSERT INTO example_notes (body) VALUES ($1) RETURNING id", json!([text])).await?;
    let id = inserted["rows"][0][0].as_i64().ok_or("insert returned no id")?;
    let vector = embed(&text);
    let search = s
        .call(
            reqwest::Method::POST,
            "/v1/collections/example_notes/search",
            json!({ "vector": vector, "k": 3, "include": { "metadata": true } }),
        )
        .await?;
    s.call(
        reqwest::Method::POST,
        "/v1/collections/example_notes/points",
        json!({ "points": [{ "id": id, "vector": vector, "metadata": { "body": text } }] }),
    )
    .await?;

    println!("stored note #{id}: {text}");
    let hits = search["hits"].as_array().cloned().unwrap_or_default();
    if hits.is_empty() {
        println!("(no earlier notes yet)");
    }
    for h in hits {
        println!(
            "  similar ({:.3}): {}",
            h["score"].as_f64().unwrap_or(0.0),
            h["metadata"]["body"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}
