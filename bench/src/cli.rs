//! Command line: one subcommand per scenario, shared flags for the broker and the bounds.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

/// Load generator for iotsphere-gateway and, side by side, any MQTT 3.1.1 broker.
///
/// Every run is bounded in count and in time (--deadline), talks to a loopback broker
/// only, prints one JSON line with all its numbers on stdout and a summary on stderr.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Broker address; loopback only.
    #[arg(long, global = true, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// Name of the broker in the report (e.g. gateway, mosquitto).
    #[arg(long, global = true, default_value = "broker")]
    pub label: String,
    /// Hard limit for the whole run, in seconds; a run that reaches it reports what it
    /// measured so far with "deadline_hit": true.
    #[arg(long, global = true, default_value_t = 60)]
    pub deadline: u64,
    /// The broker's process id: its CPU time is reported (and its memory, for `idle`).
    #[arg(long, global = true)]
    pub pid: Option<u32>,
    /// Topic root (the gateway's `topics.root`).
    #[arg(long, global = true, default_value = "iotsphere")]
    pub root: String,
    /// Device id prefix; default `b<unix time>x<pid>-`, so runs never share shadows.
    #[arg(long, global = true)]
    pub id_prefix: Option<String>,
    /// Worker threads of the load generator (it shares the machine with the broker).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Connection handshakes in flight at once while opening devices.
    #[arg(long, global = true, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Free-form label of this run in the report (run.sh: the fan-in mode, e.g. `max`).
    #[arg(long, global = true, default_value = "")]
    pub tag: String,
    /// Round number in the report (run.sh alternates brokers A B A B).
    #[arg(long, global = true, default_value_t = 0)]
    pub round: u32,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N publisher devices -> one QoS 0 subscriber on ROOT/devices/+/telemetry/#.
    Fanin(FaninArgs),
    /// desired -> delta latency: an app sets each device's desired state in turn.
    Roundtrip(RoundtripArgs),
    /// A cloud service changes state.desired in MongoDB -> delta at the device.
    Mongochange(MongochangeArgs),
    /// G gateways' change streams on one MongoDB: events each receives, with and without
    /// the ownership $match.
    Fleetwatch(FleetwatchArgs),
    /// Waits until an earlier fanin run's readings are in MongoDB (the outbox replay).
    Landed(LandedArgs),
    /// N connections held open (each subscribed to its delta); broker memory before/after.
    Idle(IdleArgs),
    /// N devices with a pending delta reconnect at once; every delta once, none missed.
    Storm(StormArgs),
    /// Active/standby pair: N devices on the active (--broker), which is killed; cloud
    /// changes made meanwhile reach every device on the standby exactly once.
    Failover(FailoverArgs),
    /// Turns the JSON lines of earlier runs into the Markdown tables of RESULTS.md.
    Summarize(SummarizeArgs),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Fanin(_) => "fanin",
            Scenario::Roundtrip(_) => "roundtrip",
            Scenario::Mongochange(_) => "mongochange",
            Scenario::Fleetwatch(_) => "fleetwatch",
            Scenario::Landed(_) => "landed",
            Scenario::Idle(_) => "idle",
            Scenario::Storm(_) => "storm",
            Scenario::Failover(_) => "failover",
            Scenario::Summarize(_) => "summarize",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct FaninArgs {
    /// Publisher connections.
    #[arg(long, default_value_t = 100)]
    pub publishers: usize,
    /// Messages in total (split evenly across publishers).
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Publish QoS (the subscriber is always QoS 0).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload bytes: a JSON telemetry reading padded to this size (at least 104).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(104..=65_000))]
    pub payload: u32,
    /// Target rate in messages per second, all publishers together; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Closed loop: messages per publisher published but not yet received by the
    /// subscriber, at most; the broker then runs as fast as it can deliver, without
    /// overflowing its buffers. 0 = open loop (only --rate limits the publishers).
    #[arg(long, default_value_t = 0)]
    pub window: u64,
    /// QoS 1: unacknowledged publishes per publisher at most.
    #[arg(long, default_value_t = 20)]
    pub inflight: usize,
    /// Publishes per write at most.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// After the last publish, how long the subscriber waits for stragglers (ms) once no
    /// message arrives.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Publishers only, no subscriber (the outbox append rate: PUBACKs per second).
    #[arg(long, conflicts_with = "window")]
    pub no_subscriber: bool,
    #[command(flatten)]
    pub mongo: MongoArgs,
}

/// Where the gateway's MongoDB is (the load generator reads and writes it as a cloud
/// service would).
#[derive(Debug, Clone, Args)]
pub struct MongoArgs {
    /// MongoDB URI (loopback hosts only). With `fanin`: after publishing, wait until every
    /// reading is in `telemetry` and check each is there exactly once.
    #[arg(long)]
    pub mongo: Option<String>,
    /// The gateway's `mongodb.database`.
    #[arg(long, default_value = "iotsphere")]
    pub database: String,
}

impl MongoArgs {
    /// `--mongo`, which `scenario` cannot run without.
    pub fn required_uri(&self, scenario: &str) -> anyhow::Result<&str> {
        self.mongo
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("{scenario} needs --mongo URI"))
    }
}

#[derive(Debug, Clone, Args)]
pub struct MongochangeArgs {
    #[command(flatten)]
    pub mongo: MongoArgs,
    /// Cloud changes of `state.desired.targetTemp` in MongoDB (devices also report a state).
    #[command(flatten)]
    pub plan: UpdatePlan,
    /// How long to wait for late deltas after the last change (ms); with polling, more
    /// than the gateway's `poll_interval_ms`.
    #[arg(long, default_value_t = 3000)]
    pub settle_ms: u64,
    /// Make every `update` of the client with this appName (the gateway's:
    /// `iotsphere-gateway/<gateway id>`) take `--slow-ms` in the server, as a distant
    /// MongoDB would (the mongo-double's `failCommand` fail point; the cloud's updates
    /// are not slowed).
    #[arg(long)]
    pub slow_app: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub slow_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct FleetwatchArgs {
    #[command(flatten)]
    pub mongo: MongoArgs,
    /// Simulated gateways (change streams), each owning an equal share of the devices.
    #[arg(long, default_value_t = 10)]
    pub gateways: usize,
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Cloud changes of `state.desired`, round robin over the devices.
    #[arg(long, default_value_t = 2000)]
    pub changes: u64,
    /// Watch without the ownership `$match` (what a gateway would receive without it).
    #[arg(long)]
    pub no_filter: bool,
    /// How long to wait for events after the last change (ms).
    #[arg(long, default_value_t = 5000)]
    pub settle_ms: u64,
}

/// Desired updates of N devices, each subscribed to its own delta topic: `rounds` per
/// device, `rate` per second (roundtrip, mongochange).
#[derive(Debug, Clone, Args)]
pub struct UpdatePlan {
    /// Devices, each subscribed to its own delta topic.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Updates per device.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Updates per second, all devices together.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
}

#[derive(Debug, Clone, Args)]
pub struct LandedArgs {
    #[command(flatten)]
    pub mongo: MongoArgs,
    /// The `fanin` run whose readings to wait for: its --publishers, --messages and
    /// --id-prefix (required here).
    #[arg(long, default_value_t = 100)]
    pub publishers: usize,
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
}

#[derive(Debug, Clone, Args)]
pub struct RoundtripArgs {
    /// Desired updates an app publishes to `shadow/desired`.
    #[command(flatten)]
    pub plan: UpdatePlan,
    /// QoS of the app's desired publishes and of the devices' subscriptions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// How long to wait for late deltas after the last desired update (ms).
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Connections to open (capped by the open-files limit, which the report states).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold them open.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
}

#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// Devices with a pending delta.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Desired updates per second while preparing the pending deltas.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Before the storm, drop the devices' connections without DISCONNECT (a power cut)
    /// instead of disconnecting cleanly.
    #[arg(long)]
    pub abrupt: bool,
    /// After the last device got its delta, how long to keep listening for duplicates (ms).
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
}

/// `--broker` is the active gateway, `--pid` the standby (its CPU is measured).
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub mongo: MongoArgs,
    /// The standby gateway's MQTT address (loopback only).
    #[arg(long)]
    pub standby: SocketAddr,
    /// The active gateway's process id: loadgen kills it (SIGKILL).
    #[arg(long)]
    pub active_pid: u32,
    /// The pair's `mongodb.lease` (the `_id` of its document in `leases`).
    #[arg(long, default_value = "site-1")]
    pub lease: String,
    /// The pair's `mongodb.lease_ttl_ms`, for the report (the standby must take the lease
    /// within 3/4 of it).
    #[arg(long, default_value_t = 10_000)]
    pub lease_ttl_ms: u64,
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// The cloud's changes per second from the kill on; 0 = one after the other, as fast
    /// as MongoDB answers. A rate that spreads them past the takeover also puts changes
    /// in its window (the standby stamping and importing the devices).
    #[arg(long, default_value_t = 0.0)]
    pub cloud_rate: f64,
    /// After the last device got its delta, how long to keep listening for duplicates (ms).
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct SummarizeArgs {
    /// File of JSON lines written by runs of the other subcommands.
    pub file: std::path::PathBuf,
}
