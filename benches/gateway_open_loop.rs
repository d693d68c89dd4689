//! An open-loop load generator for seckill_gateway (`make bench-gateway` runs it): purchases
//! at a fixed rate, each sent at its scheduled time whatever the answers before it did, its
//! latency measured from that scheduled time to its answer (so a stalled gateway shows as
//! latency, not as a slower rate). Each purchase waits for its outcome (`wait_ms`).
//!
//! `cargo bench --bench gateway_open_loop -- URL TOKENS_FILE RATE SECONDS`

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    // `cargo test` and nextest run (and list) bench targets too: only `cargo bench`, which
    // passes --bench, generates load.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [url, tokens, rate, seconds] = args.as_slice() else {
        eprintln!("usage: gateway_open_loop URL TOKENS_FILE RATE SECONDS");
        std::process::exit(2);
    };
    let tokens: Vec<String> = std::fs::read_to_string(tokens)
        .expect("tokens file")
        .lines()
        .map(str::to_string)
        .collect();
    let rate: u64 = rate.parse().expect("rate");
    let seconds: u64 = seconds.parse().expect("seconds");
    let total = rate * seconds;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build_http();
    let latencies = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let statuses: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let run = std::process::id();
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let request = hyper::Request::post(url.as_str())
            .header(
                "authorization",
                format!("Bearer {}", tokens[i as usize % tokens.len()]),
            )
            .header("idempotency-key", format!("ol-{run}-{i}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let (client, latencies, statuses) = (client.clone(), latencies.clone(), statuses.clone());
        tasks.push(tokio::spawn(async move {
            let status = match client.request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.into_body().collect().await;
                    status
                }
                Err(_) => 0,
            };
            let micros = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
            if let Ok(mut latencies) = latencies.lock() {
                latencies.saturating_record(micros);
            }
            if let Ok(mut statuses) = statuses.lock() {
                *statuses.entry(status).or_default() += 1;
            }
        }));
    }
    let sent_in = start.elapsed();
    for task in tasks {
        let _ = task.await;
    }
    let latencies = latencies.lock().expect("latencies");
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "open loop: {total} purchases at {rate}/s (sent in {:.2} s), click to outcome p50 {:.1} ms p99 {:.1} ms max {:.1} ms, statuses {:?}",
        sent_in.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        latencies.max() as f64 / 1000.0,
        statuses.lock().expect("statuses")
    );
}
