//! An open-loop load generator for seckill_gateway (`make bench-gateway` runs it): purchases
//! at a fixed rate, each sent at its scheduled time whatever the answers before it did, its
//! latency measured from that scheduled time to its answer (so a stalled gateway shows as
//! latency, not as a slower rate). Each purchase waits for its outcome (`wait_ms`).
//!
//! `cargo bench --bench gateway_open_loop -- URL TOKENS_FILE RATE SECONDS [WARMUP_SECONDS]`
//!
//! The warm-up runs first at the same rate and is not in the percentiles (its p99 is
//! printed apart): it opens the client's connections, one per purchase in flight, which
//! otherwise all open in the first second and put that second's tail on the whole run.

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
    let (url, tokens, rate, seconds, warmup) = match args.as_slice() {
        [url, tokens, rate, seconds] => (url, tokens, rate, seconds, "0"),
        [url, tokens, rate, seconds, warmup] => (url, tokens, rate, seconds, warmup.as_str()),
        _ => {
            eprintln!("usage: gateway_open_loop URL TOKENS_FILE RATE SECONDS [WARMUP_SECONDS]");
            std::process::exit(2);
        }
    };
    let tokens: Vec<String> = std::fs::read_to_string(tokens)
        .expect("tokens file")
        .lines()
        .map(str::to_string)
        .collect();
    let rate: u64 = rate.parse().expect("rate");
    let seconds: u64 = seconds.parse().expect("seconds");
    let warmup: u64 = warmup.parse().expect("warm-up seconds");
    let total = rate * seconds;
    let warming = rate * warmup;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build_http();
    let histogram =
        || hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let latencies = Arc::new(Mutex::new(histogram()));
    let warmup_latencies = Arc::new(Mutex::new(histogram()));
    // By the second the purchase was due in: a tail that grows through the run and one that
    // comes in bursts read differently.
    let by_second = Arc::new(Mutex::new(
        (0..(warmup + seconds).max(1))
            .map(|_| histogram())
            .collect::<Vec<_>>(),
    ));
    let statuses: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let warmup_statuses: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let run = std::process::id();
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::with_capacity((warming + total) as usize);
    let mut measured_from = start;
    for i in 0..warming + total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        if i == warming {
            measured_from = due;
        }
        tokio::time::sleep_until(due.into()).await;
        let request = hyper::Request::post(url.as_str())
            .header(
                "authorization",
                format!("Bearer {}", tokens[i as usize % tokens.len()]),
            )
            .header("idempotency-key", format!("ol-{run}-{i}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let second = usize::try_from(i / rate.max(1)).unwrap_or(usize::MAX);
        // A warm-up purchase goes to the warm-up's figures.
        let (latencies, statuses) = if i < warming {
            (warmup_latencies.clone(), warmup_statuses.clone())
        } else {
            (latencies.clone(), statuses.clone())
        };
        let (client, by_second) = (client.clone(), by_second.clone());
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
            if let Ok(mut by_second) = by_second.lock() {
                if let Some(histogram) = by_second.get_mut(second) {
                    histogram.saturating_record(micros);
                }
            }
            if let Ok(mut statuses) = statuses.lock() {
                *statuses.entry(status).or_default() += 1;
            }
        }));
    }
    let sent_in = measured_from.elapsed();
    for task in tasks {
        let _ = task.await;
    }
    let latencies = latencies.lock().expect("latencies");
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    if warming > 0 {
        let warmup_latencies = warmup_latencies.lock().expect("warm-up latencies");
        println!(
            "  warm-up: {warming} purchases in {warmup} s at the same rate, not counted: p99 {:.1} ms, statuses {:?}",
            warmup_latencies.value_at_quantile(0.99) as f64 / 1000.0,
            warmup_statuses.lock().expect("warm-up statuses")
        );
    }
    println!(
        "open loop: {total} purchases at {rate}/s (sent in {:.2} s), click to outcome p50 {:.1} ms p99 {:.1} ms max {:.1} ms, statuses {:?}",
        sent_in.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        latencies.max() as f64 / 1000.0,
        statuses.lock().expect("statuses")
    );
    let by_second = by_second.lock().expect("by second");
    let p99s: Vec<String> = by_second
        .iter()
        .map(|h| format!("{:.0}", h.value_at_quantile(0.99) as f64 / 1000.0))
        .collect();
    println!("  p99 by second, warm-up included (ms): {}", p99s.join(" "));
}
