//! `drl`: parses the command line, sets up logging and hands over to `drl-server`, which holds
//! all the behaviour (and its tests).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use drl_bench::{self as bench, BenchOptions, KeyDistribution, Length, Target};
use drl_client::DEFAULT_SERVER;
use drl_server::limits::{self, EdgeLimits};
use drl_server::{AdminToken, Config, Listeners, Settings};
use tracing_subscriber::EnvFilter;

mod allocator;
mod check;

/// The node's input limits and load shedding (docs/api.md, "Input limits"); each also from
/// its environment variable.
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Largest HTTP request body, in bytes (above: 413).
    #[arg(long, env = "DRL_MAX_BODY_BYTES", value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_BODY_BYTES, value_parser = at_least_one)]
    max_body_bytes: usize,
    /// Largest gRPC request message, in bytes (above: OUT_OF_RANGE).
    #[arg(long, env = "DRL_MAX_MESSAGE_BYTES", value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_MESSAGE_BYTES, value_parser = at_least_one)]
    max_message_bytes: usize,
    /// Largest request header section, in bytes, HTTP and gRPC (above: 431 / refused stream).
    #[arg(long, env = "DRL_MAX_HEADER_BYTES", value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_HEADER_BYTES, value_parser = at_least_one)]
    max_header_bytes: usize,
    /// Requests answered at once, HTTP and gRPC together; more are shed at once (503 with
    /// Retry-After / UNAVAILABLE), never queued.
    #[arg(long, env = "DRL_MAX_IN_FLIGHT", value_name = "N", default_value_t = limits::DEFAULT_MAX_IN_FLIGHT, value_parser = at_least_one)]
    max_in_flight: usize,
    /// Open connections, HTTP and gRPC together; a new one beyond is closed at once.
    #[arg(long, env = "DRL_MAX_CONNECTIONS", value_name = "N", default_value_t = limits::DEFAULT_MAX_CONNECTIONS, value_parser = at_least_one)]
    max_connections: usize,
    /// Time a connection has to send a request's headers (from accept or its previous
    /// response: also the HTTP/1.1 keep-alive time), and a TLS connection its handshake.
    #[arg(long, env = "DRL_HEADER_READ_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = timeout)]
    header_read_timeout: Duration,
    /// Time a request's body has to arrive after its headers (then 408 / the call fails).
    #[arg(long, env = "DRL_BODY_READ_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = timeout)]
    body_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    #[arg(long, env = "DRL_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = timeout)]
    idle_timeout: Duration,
    /// HTTP/2 keep-alive pings after this long without a frame from the peer; 0: none.
    #[arg(long, env = "DRL_KEEPALIVE_INTERVAL", value_name = "DURATION", default_value = "30s", value_parser = keepalive)]
    keepalive_interval: Duration,
    /// Concurrent streams (requests) per HTTP/2 connection, HTTP and gRPC.
    #[arg(long, env = "DRL_MAX_STREAMS", value_name = "N", default_value_t = limits::DEFAULT_MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams: u32,
}

impl From<LimitArgs> for EdgeLimits {
    fn from(a: LimitArgs) -> Self {
        Self {
            max_body_bytes: a.max_body_bytes,
            max_message_bytes: a.max_message_bytes,
            max_header_bytes: a.max_header_bytes,
            max_in_flight: a.max_in_flight,
            max_connections: a.max_connections,
            header_read_timeout: a.header_read_timeout,
            body_read_timeout: a.body_read_timeout,
            idle_timeout: a.idle_timeout,
            keepalive_interval: (!a.keepalive_interval.is_zero()).then_some(a.keepalive_interval),
            max_streams: a.max_streams,
        }
    }
}

/// A timeout of the edge: more than 0, at most a day.
fn timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?}: a timeout must be more than 0")),
        d if d > limits::MAX_TIMEOUT => Err(format!("{text:?}: a timeout is at most a day (24h)")),
        d => Ok(d),
    }
}

/// The HTTP/2 keep-alive interval: 0 for none, else a [`timeout`].
fn keepalive(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Ok(d),
        _ => timeout(text),
    }
}

/// A whole number of at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

/// A rate-limit decision service: may user U call endpoint E now?
#[derive(Debug, Parser)]
#[command(name = "drl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node. The config file is reloaded when it changes, on SIGHUP, and on
    /// `POST /v1/config/reload` (admin routes need DRL_ADMIN_TOKEN set).
    Serve {
        /// Config file (YAML); without one: in-memory store, 100 requests/minute per user and
        /// endpoint.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address of the HTTP API (host:port; port 0 picks a free one).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        http_addr: String,
        /// Address of the gRPC API: drl.v1.RateLimiter, Envoy's RateLimitService and
        /// grpc.health.v1.Health (host:port; port 0 picks a free one).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
        grpc_addr: String,
        /// Serve the admin API (the status page, /metrics and the admin routes) on this
        /// address of its own instead of the HTTP API's, where it then answers 404 (host:port;
        /// e.g. 127.0.0.1:9090 to keep it on the machine). Replaces the config's
        /// server.admin.addr; over TLS as server.tls (or server.admin.tls) says.
        #[arg(long, env = "DRL_ADMIN_ADDR", value_name = "ADDR")]
        admin_addr: Option<String>,
        /// Log lines as text or as one JSON object per line.
        #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Ask a running node; exit code 0 allowed, 1 denied, 2 error.
    Check {
        /// The node's URL.
        #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER)]
        server: String,
        user_id: String,
        endpoint: String,
        /// Requests to check (and count) at once, all or nothing; 0 only reads.
        #[arg(long, value_name = "N", default_value_t = 1)]
        hits: u64,
        /// For an https:// server: trust the CA certificates in this PEM file instead of the
        /// system's root CAs.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Load a running node and report decisions/s, allowed/denied/errors and latency
    /// percentiles (live progress on a terminal).
    Bench(BenchArgs),
}

/// The options of `drl bench`; see `drl_bench` for what they mean.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// The API to load: Envoy's ShouldRateLimit, the native batch Check, or HTTP /v1/check.
    #[arg(long, value_enum, default_value_t = BenchTarget::Envoy)]
    target: BenchTarget,
    /// The node's URL [default: http://127.0.0.1:8081 for gRPC, http://127.0.0.1:8080 for HTTP].
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Workers, each with one request in flight.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the gRPC workers share [default: 2].
    #[arg(long, value_name = "N")]
    connections: Option<usize>,
    /// Open loop: send this many requests per second, latency measured from when each was due.
    #[arg(long, value_name = "R")]
    rate: Option<u64>,
    /// Checks per request (native target only).
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,
    /// Distinct keys (users), drawn uniformly unless --zipf, --hot or --sequential.
    #[arg(long, value_name = "K", default_value_t = 10_000)]
    keys: u64,
    /// Index of the first key: the keys are users u<first>..u<first + K - 1>.
    #[arg(long, value_name = "N", default_value_t = 0)]
    first_key: u64,
    /// Draw the K keys Zipf-skewed with this exponent (e.g. 1.1).
    #[arg(long, value_name = "S", conflicts_with = "hot")]
    zipf: Option<f64>,
    /// Use one key for every check.
    #[arg(long, conflicts_with = "sequential")]
    hot: bool,
    /// Roll the key set with the clock: the K keys in use slide by K every TIME (e.g. 1m), so
    /// older keys fall out of use and expire on the node (soak tests).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    roll: Option<Duration>,
    /// Ask about the K keys in order (check j of request i: key (i·batch + j) mod K), so the
    /// first K checks touch every key once: fills a store with exactly K keys.
    #[arg(long, conflicts_with = "zipf")]
    sequential: bool,
    /// Hits per check.
    #[arg(long, value_name = "N", default_value_t = 1)]
    hits: u32,
    /// How long to run (e.g. 10s, 1m) [default: 10s].
    #[arg(long, value_name = "TIME", value_parser = parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Stop after this many requests instead of a duration.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// A request without an answer after this long is an error.
    #[arg(long, value_name = "TIME", value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Seed of the key choice.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// The domain of the Envoy requests (descriptor user_id, endpoint) [default: drl, the
    /// node's native rules].
    #[arg(long, value_name = "NAME", default_value = drl_bench::target::ENVOY_DOMAIN)]
    domain: String,
    /// Report the most admitted checks in any interval this long (e.g. 10s): the
    /// over-admission check of a limit of N per that window.
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    admission_window: Option<Duration>,
    /// Print the result as one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchTarget {
    Envoy,
    Native,
    Http,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    drl_core::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a config file; print every error as file:line:column; exit 0 valid, 1 invalid.
    Validate { file: PathBuf },
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(allocator::collect_if_due)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("drl: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    // Usage errors exit 2 (clap's default), which `check` also uses for "no decision".
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Serve { log_format, .. } => *log_format,
        _ => LogFormat::Text,
    };
    init_tracing(log_format);
    match cli.command {
        Command::Serve {
            config,
            http_addr,
            grpc_addr,
            admin_addr,
            limits,
            ..
        } => {
            let addrs = Addrs {
                http: &http_addr,
                grpc: &grpc_addr,
                admin: admin_addr.as_deref(),
            };
            match serve(config.as_deref(), addrs, limits.into()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("drl serve: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check {
            server,
            user_id,
            endpoint,
            hits,
            ca,
        } => {
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            let client = drl_client::Client::new(&server).and_then(|c| match &ca {
                Some(ca) => c.with_ca(ca),
                None => Ok(c),
            });
            let code = check::run(client, &user_id, &endpoint, hits, &mut out, &mut err).await;
            ExitCode::from(code)
        }
        Command::Config(ConfigCommand::Validate { file }) => validate(&file),
        Command::Bench(args) => bench(args).await,
    }
}

async fn bench(args: BenchArgs) -> ExitCode {
    let options = BenchOptions {
        target: match args.target {
            BenchTarget::Envoy => Target::Envoy,
            BenchTarget::Native => Target::Native,
            BenchTarget::Http => Target::Http,
        },
        server: args.server,
        concurrency: args.concurrency,
        connections: args.connections,
        rate: args.rate,
        batch: args.batch,
        keys: args.keys,
        distribution: match (args.zipf, args.hot, args.sequential) {
            (Some(s), _, _) => KeyDistribution::Zipf(s),
            (None, true, _) => KeyDistribution::Hot,
            (None, false, true) => KeyDistribution::Sequential,
            (None, false, false) => KeyDistribution::Uniform,
        },
        roll: args.roll,
        first_key: args.first_key,
        hits: args.hits,
        length: match (args.requests, args.duration) {
            (Some(n), _) => Length::Requests(n),
            (None, Some(d)) => Length::Duration(d),
            (None, None) => Length::Duration(Duration::from_secs(10)),
        },
        timeout: args.timeout,
        seed: args.seed,
        domain: args.domain,
        admission_window: args.admission_window,
    };
    let progress = if std::io::stderr().is_terminal() {
        bench::Progress::Stderr
    } else {
        bench::Progress::Quiet
    };
    match bench::run(&options, progress).await {
        Ok(report) if args.json => {
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("drl bench: {e}");
            // 2, as for a usage error, when the options were refused.
            ExitCode::from(if matches!(e, bench::BenchError::Invalid(_)) {
                2
            } else {
                1
            })
        }
    }
}

/// Logs go to stderr (stdout is for `check`'s answer); `RUST_LOG` overrides the `info` level.
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// The addresses `drl serve` listens on.
#[derive(Debug, Clone, Copy)]
struct Addrs<'a> {
    http: &'a str,
    grpc: &'a str,
    admin: Option<&'a str>,
}

/// `drl serve`: binds the listeners, then runs the node on them until a shutdown signal.
async fn serve(config: Option<&Path>, addrs: Addrs<'_>, limits: EdgeLimits) -> anyhow::Result<()> {
    allocator::return_freed_memory();
    let admin_token = std::env::var(AdminToken::ENV)
        .ok()
        .and_then(|t| AdminToken::new(&t));
    if admin_token.is_none() {
        tracing::info!("{} is not set: admin routes disabled", AdminToken::ENV);
    }
    // Installed before the node says it listens, so that a SIGTERM sent as soon as it does is
    // a graceful stop, never the default action.
    let shutdown = drl_server::shutdown_signal();
    let http = bind(addrs.http).await?;
    let grpc = bind(addrs.grpc).await?;
    let admin = match addrs.admin {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let settings = Settings {
        config: config.map(Path::to_path_buf),
        limits,
        admin_token,
    };
    drl_server::run(settings, Listeners { http, grpc, admin }, shutdown).await
}

async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

fn validate(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            let rules = config.rules.rules().len();
            for warning in config.warnings() {
                eprintln!("{}: warning: {warning}", file.display());
            }
            println!("{}: valid ({rules} rules)", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One `file:line:column: message` line per problem.
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
