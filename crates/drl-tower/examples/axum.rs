//! An axum service rate-limited in-process by drl's tower layer.
//!
//! ```text
//! cargo run -p drl-tower --example axum           # listens on 127.0.0.1:3000
//! curl -i -H 'x-user-id: alice' http://127.0.0.1:3000/items/1    # 200, RateLimit-* headers
//! curl -i http://127.0.0.1:3000/items/1                          # 401: no user
//! ```
//!
//! `/items/{id}` allows 3 requests per minute per user (all ids share the route's counter), any
//! other route 100; the fourth `/items/...` of a minute gets 429 with `Retry-After`. With a
//! `drl-redis` store instead of the memory one (`Limiter::builder(rules).build_with_store(..)`),
//! every instance of the service shares the counters.

use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use drl_core::{Algorithm, Limiter, Policy, Rule, Rules};
use drl_tower::{RateLimitLayer, header};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let minute = Duration::from_secs(60);
    let rules = Rules::new(
        Policy::per(100, minute, Algorithm::default())?,
        [Rule::new(
            None,
            Some("/items/{id}"),
            Policy::per(3, minute, Algorithm::SlidingLog)?,
        )],
    )?;
    let app = Router::new()
        .route(
            "/items/{id}",
            get(|Path(id): Path<String>| async move { format!("item {id}\n") }),
        )
        .route("/", get(|| async { "hello\n" }))
        .layer(RateLimitLayer::new(
            Limiter::new(rules),
            header("x-user-id"),
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
