//! Opening many client connections at once, with a bound on handshakes in flight.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Runs `open(i)` for `i in 0..count`, at most `concurrency` at a time, each in its own
/// task; returns the results in index order.
pub async fn open_all<T, F, Fut>(
    count: usize,
    concurrency: usize,
    open: F,
) -> Vec<anyhow::Result<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let permits = permits.clone();
        let opening = open(i);
        tasks.spawn(async move {
            // The semaphore is never closed; without a permit we would only go faster.
            let _permit = permits.acquire_owned().await;
            (i, opening.await)
        });
    }
    let mut results: Vec<Option<anyhow::Result<T>>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, result)) = joined {
            results[i] = Some(result);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("the connecting task panicked"))))
        .collect()
}
