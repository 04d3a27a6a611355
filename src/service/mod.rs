//! The shadow service: turns one shadow request (topic + payload) into store writes and the
//! messages to publish — `document`, `delta`, `rejected` — in the requester's encoding.
//!
//! It knows topics, payloads and the store; it does not know the broker: the link loop
//! (`service::link_loop`) feeds it requests in batches, calls [`ShadowService::commit`] once per
//! batch (one fsync), and only then publishes what the batch produced. Every refused
//! request gets a `rejected` reply; nothing is dropped silently.
//!
//! The delta is published **retained** whenever it changes, so a heater that was offline
//! when its setpoint changed receives the pending delta as soon as it subscribes. When the
//! delta becomes empty a zero-length retained message clears it (MQTT's way of deleting a
//! retained message; subscribers see one empty message, meaning "nothing pending").
//!
//! The desired lifecycle (`shadow`'s module doc): a device's `refused` request is served
//! like an update; desired leaves that expire are expired by one timer for the whole
//! gateway ([`Expiries`]: the link loop sleeps until [`ShadowService::next_expiry`] and
//! calls [`ShadowService::expire_due`]), and at start before any delta is published, so a
//! heater that was offline across the expiry (and a gateway restart) never sees it.
//!
//! With a MongoDB uplink, a device this store does not hold is claimed first (see
//! `uplink::handover`): its requests are parked until the uplink answers with MongoDB's
//! shadow, which is imported before they are served; a device claimed by another gateway
//! is released (removed here, its retained delta cleared).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

mod expiries;
pub mod link_loop;
mod rate;

use expiries::Expiries;
use rate::RateLimiter;

use crate::alert_event::ReleaseListener;
use crate::cloud::{CloudDesired, FromCloud};
use crate::codec::{self, DecodeError, Encoding, ShadowRequest};
use crate::config::GatewayConfig;
use crate::messages::{Count, Outgoing, Replies};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, ToCloud};
use crate::shadow::{
    self, Applied, Document, ErrorCode, Limits, LocalWins, Refusal, Rejection, Section, Update,
};
use crate::store::{ShadowStore, StoreError, StoredShadow};
use crate::topics::{Route, ShadowTopic, Topics};

/// Settings the service needs from the configuration.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub gateway_id: String,
    pub limits: Limits,
    pub local_wins: LocalWins,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

impl ServiceSettings {
    pub fn from_config(config: &GatewayConfig) -> Self {
        Self {
            gateway_id: config.gateway.id.clone(),
            limits: Limits {
                max_document_bytes: config.shadow.max_document_bytes,
                max_depth: config.shadow.max_depth,
            },
            // `check` refused a bad path before the gateway started or reloaded.
            local_wins: LocalWins::new(&config.shadow.local_wins).unwrap_or_else(|e| {
                tracing::error!(error = %e, "shadow.local_wins ignored");
                LocalWins::default()
            }),
            rate_per_sec: config.shadow.rate_per_sec,
            rate_burst: config.shadow.rate_burst,
        }
    }
}

pub struct ShadowService {
    topics: Topics,
    replies: Replies,
    metrics: Metrics,
    store: ShadowStore,
    settings: ServiceSettings,
    rate: RateLimiter,
    /// With a MongoDB uplink: where every shadow write bound for the cloud goes, in the
    /// batch's commit.
    outbox: Option<Outbox>,
    /// The running configuration; shadow limits follow its SIGHUP reloads.
    live: Option<watch::Receiver<GatewayConfig>>,
    /// With a MongoDB uplink: where the ids of devices to claim go.
    claims: Option<flume::Sender<String>>,
    /// What arrived for devices being claimed, in order, handled once the claim is
    /// answered.
    parked: HashMap<String, Vec<Parked>>,
    /// Told about devices released to another gateway (their alerts end here).
    alerts: Option<Box<dyn ReleaseListener>>,
    /// When each stored shadow's next desired leaf expires.
    expiries: Expiries,
}

/// A request or a cloud change that waits for its device's claim.
enum Parked {
    Request(ShadowTopic, Vec<u8>),
    Cloud(CloudDesired),
}

impl ShadowService {
    pub fn new(
        replies: Replies,
        metrics: Metrics,
        store: ShadowStore,
        settings: ServiceSettings,
        outbox: Option<Outbox>,
    ) -> Self {
        let rate = RateLimiter::new(settings.rate_per_sec, settings.rate_burst);
        Self {
            topics: replies.topics().clone(),
            replies,
            metrics,
            store,
            settings,
            rate,
            outbox,
            live: None,
            claims: None,
            parked: HashMap::new(),
            alerts: None,
            expiries: Expiries::default(),
        }
    }

    /// Tells the alert task which devices leave for another gateway.
    pub fn tell_alerts(mut self, alerts: Option<impl ReleaseListener + 'static>) -> Self {
        self.alerts = alerts.map(|a| Box::new(a) as Box<dyn ReleaseListener>);
        self
    }

    /// Claims devices the store does not hold through the uplink before serving them.
    pub fn claim_through(mut self, claims: flume::Sender<String>) -> Self {
        self.claims = Some(claims);
        self
    }

    /// Takes shadow limits from `config` whenever a reload changes it.
    pub fn follow(mut self, config: watch::Receiver<GatewayConfig>) -> Self {
        self.live = Some(config);
        self
    }

    fn refresh_settings(&mut self) {
        let Some(live) = &mut self.live else {
            return;
        };
        if !live.has_changed().unwrap_or(false) {
            return;
        }
        let settings = ServiceSettings::from_config(&live.borrow_and_update());
        self.rate
            .set_limits(settings.rate_per_sec, settings.rate_burst);
        self.settings = settings;
    }

    /// The filters the gateway's link subscribes to: every device's shadow requests.
    /// (Telemetry and command answers are taken in the broker, see `ingest`.)
    pub fn request_filters(&self) -> Vec<String> {
        ShadowTopic::REQUESTS
            .into_iter()
            .map(|kind| self.topics.shadow_filter(kind))
            .collect()
    }

    /// Tells the uplink that the committed batch's cloud writes are durable.
    pub fn wake_uplink(&self) {
        if let Some(outbox) = &self.outbox {
            outbox.wake();
        }
    }

    /// Puts a write bound for the cloud into the outbox (nothing without an uplink).
    fn to_cloud(&self, write: ToCloud) -> Result<(), StoreError> {
        if let Some(outbox) = &self.outbox {
            outbox.push(write)?;
        }
        Ok(())
    }

    /// Applies what the uplink sent: a cloud desired change, a claim's answer, a release.
    pub fn apply_from_cloud(
        &mut self,
        change: FromCloud,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), StoreError> {
        match change {
            FromCloud::Desired(change) => self.apply_cloud_desired(change, out),
            FromCloud::Claimed { device_id, shadow } => {
                self.import(&device_id, shadow.map(|s| *s), out)
            }
            FromCloud::Released { device_id } => self.release(&device_id, out),
            FromCloud::ShutOut { device_id } => {
                let dropped = self.drop_parked(&device_id);
                tracing::warn!(
                    device_id,
                    dropped,
                    "requests dropped: the device is served by the active gateway of this pair"
                );
                Ok(())
            }
        }
    }

    /// Puts the shadow a claim brought from MongoDB in the store (unless the device got
    /// one meanwhile), publishes its pending delta, and handles what was parked (a cloud
    /// change the claimed shadow already holds changes nothing).
    fn import(
        &mut self,
        device_id: &str,
        shadow: Option<Document>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), StoreError> {
        let parked = self.parked.remove(device_id).unwrap_or_default();
        if let Some(document) = shadow.filter(|_| !self.has(device_id)) {
            let document = self.expire_on_arrival(device_id, document)?;
            let encoding = parked
                .iter()
                .find_map(|item| match item {
                    Parked::Request(_, payload) => codec::decode_request(payload).ok()?.0,
                    Parked::Cloud(_) => None,
                })
                .unwrap_or_default();
            if let Some(delta) = shadow::delta(&document) {
                out.push(self.replies.publication(
                    device_id,
                    ShadowTopic::Delta,
                    encoding,
                    None,
                    &delta,
                    true,
                ));
            }
            tracing::info!(
                device_id,
                version = document.version,
                "serving a device claimed from MongoDB"
            );
            self.store
                .set_cloud_base(device_id, &document.state.desired)?;
            self.put(device_id, &StoredShadow { document, encoding })?;
        }
        for item in parked {
            match item {
                Parked::Request(kind, payload) => {
                    let stored = self.store.get(device_id)?;
                    self.serve(device_id, kind, stored, &payload, out)?;
                }
                Parked::Cloud(change) => self.merge_cloud_desired(change, out)?,
            }
        }
        Ok(())
    }

    /// Stops serving a device another gateway claimed.
    fn release(&mut self, device_id: &str, out: &mut Vec<Outgoing>) -> Result<(), StoreError> {
        if !self.has(device_id) {
            return Ok(());
        }
        self.store.remove(device_id)?;
        if let Some(alerts) = &self.alerts {
            alerts.released(device_id);
        }
        out.push(self.replies.clear_delta(device_id));
        tracing::info!(
            device_id,
            "another gateway claimed the device: no longer served here"
        );
        Ok(())
    }

    fn has(&self, device_id: &str) -> bool {
        matches!(self.store.get(device_id), Ok(Some(_)))
    }

    /// A cloud change of a device the store does not hold waits for its claim (the device
    /// may have been taken over; its shadow comes from MongoDB first).
    fn apply_cloud_desired(
        &mut self,
        change: CloudDesired,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), StoreError> {
        if !self.has(&change.device_id)
            && self.park(&change.device_id, Parked::Cloud(change.clone()))
        {
            return Ok(());
        }
        self.merge_cloud_desired(change, out)
    }

    /// Applies a desired change made in the cloud: the cloud wins on the fields it changed
    /// (a differing local value is logged as overridden); the device gets the delta.
    fn merge_cloud_desired(
        &mut self,
        change: CloudDesired,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), StoreError> {
        let device_id = change.device_id.as_str();
        if !crate::topics::is_valid_id(device_id) {
            tracing::warn!(device_id, "ignored a cloud change for an invalid device id");
            return Ok(());
        }
        let stored = self.store.get(device_id)?;
        let encoding = stored.as_ref().map(|s| s.encoding).unwrap_or_default();
        let local = stored
            .as_ref()
            .map(|s| s.document.state.desired.clone())
            .unwrap_or_default();
        // MongoDB's desired now holds this change: the writer's three-way merge must not
        // replay it over what the lifecycle did with it since (a refusal, an expiry).
        let mut cloud = self.store.cloud_base(device_id);
        if change.replace {
            cloud.clone_from(&change.state);
        } else {
            shadow::merge_section(&mut cloud, &change.state);
        }
        self.store.set_cloud_base(device_id, &cloud)?;
        let state = if change.replace {
            shadow::replacement_patch(&local, &change.state)
        } else {
            change.state
        };
        for (field, cloud) in &state {
            if let Some(overridden) = local.get(field).filter(|l| *l != cloud) {
                tracing::info!(device_id, field, local = %overridden, cloud = %cloud, "cloud desired overrides a local desired value");
            }
        }
        let update = Update {
            expires_at: change.expires_at,
            changed_at: change.changed_at,
            ..Update::new(Section::Desired, state)
        };
        match self.update(device_id, encoding, stored, &update, epoch_secs(), out) {
            Ok(()) => Ok(()),
            Err(ServiceError::Rejected(rejection)) => {
                tracing::warn!(device_id, code = rejection.code.as_u16(), message = %rejection.message, "a cloud desired change was refused");
                Ok(())
            }
            Err(ServiceError::Store(e)) => Err(e),
        }
    }

    /// The retained deltas of every stored shadow with something pending; published at
    /// startup because the broker keeps retained messages in memory only. Desired leaves
    /// that expired while the gateway was down expire first (stored and sent to the
    /// cloud), so no delta holds them; the expiry timer starts from what is left.
    pub fn pending_deltas(&mut self) -> Result<Vec<Outgoing>, StoreError> {
        let mut out = Vec::new();
        let stored: Vec<(String, StoredShadow)> = self.store.iter().collect::<Result<_, _>>()?;
        let mut expired = false;
        for (device_id, mut stored) in stored {
            let version = stored.document.version;
            stored.document = self.expire_on_arrival(&device_id, stored.document)?;
            if stored.document.version == version {
                self.expiries
                    .schedule(&device_id, shadow::next_expiry(&stored.document));
            } else {
                self.put(&device_id, &stored)?;
                expired = true;
            }
            if let Some(delta) = shadow::delta(&stored.document) {
                out.push(self.replies.publication(
                    &device_id,
                    ShadowTopic::Delta,
                    stored.encoding,
                    None,
                    &delta,
                    true,
                ));
            }
        }
        if expired {
            self.commit()?;
        }
        Ok(out)
    }

    /// When the link loop must call [`Self::expire_due`] next (epoch seconds).
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiries.next()
    }

    /// Expires the desired leaves that are due: each such shadow is stored, its document
    /// and delta published and its write queued for the cloud, as for any change.
    pub fn expire_due(&mut self, out: &mut Vec<Outgoing>) -> Result<(), StoreError> {
        let now = epoch_secs();
        for device_id in self.expiries.take_due(now) {
            let Some(stored) = self.store.get(&device_id)? else {
                continue;
            };
            match shadow::expire(&stored.document, now, &self.settings.limits) {
                Ok(applied) if applied.changed => {
                    tracing::info!(device_id, "desired values expired");
                    let encoding = stored.encoding;
                    self.publish(&device_id, encoding, Some(&stored), applied, None, out)?;
                }
                Ok(_) => self
                    .expiries
                    .schedule(&device_id, shadow::next_expiry(&stored.document)),
                Err(rejection) => {
                    tracing::error!(device_id, message = %rejection.message, "could not expire desired values");
                }
            }
        }
        Ok(())
    }

    /// A shadow that comes from elsewhere (the store at start, a claim from MongoDB) with
    /// its due leaves expired; the cloud gets the change.
    fn expire_on_arrival(
        &mut self,
        device_id: &str,
        document: Document,
    ) -> Result<Document, StoreError> {
        match shadow::expire(&document, epoch_secs(), &self.settings.limits) {
            Ok(applied) if applied.changed => {
                tracing::info!(device_id, "desired values expired while nobody served them");
                self.to_cloud(ToCloud::Shadow {
                    device_id: device_id.to_string(),
                    document: Some(Box::new(applied.document.clone())),
                })?;
                Ok(applied.document)
            }
            _ => Ok(document),
        }
    }

    /// Stores a shadow and schedules its next expiry.
    fn put(&mut self, device_id: &str, stored: &StoredShadow) -> Result<(), StoreError> {
        self.store.put(device_id, stored)?;
        self.expiries
            .schedule(device_id, shadow::next_expiry(&stored.document));
        Ok(())
    }

    /// Handles one request and appends what to publish once the batch is committed.
    /// A store failure is returned: the caller must not publish this batch's replies.
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        out: &mut Vec<Outgoing>,
    ) -> Result<(), StoreError> {
        let (device_id, kind) = match self.topics.parse(topic) {
            Ok(Route::Shadow { device_id, kind }) if ShadowTopic::REQUESTS.contains(&kind) => {
                (device_id, kind)
            }
            // The link subscribes only to the topics above; anything else is not ours.
            Ok(_) | Err(_) => {
                tracing::debug!(topic, "ignoring a topic the gateway does not serve");
                return Ok(());
            }
        };
        self.refresh_settings();
        let stored = self.store.get(device_id)?;
        let last_encoding = stored.as_ref().map(|s| s.encoding).unwrap_or_default();

        if !self.rate.allow(device_id, Instant::now()) {
            let rejection = Rejection {
                code: ErrorCode::TooManyRequests,
                message: format!(
                    "more than {} requests per second (burst {})",
                    self.settings.rate_per_sec, self.settings.rate_burst
                ),
            };
            out.push(
                self.replies
                    .rejected(device_id, last_encoding, None, &rejection),
            );
            return Ok(());
        }
        if stored.is_none() && self.park(device_id, Parked::Request(kind, payload.to_vec())) {
            return Ok(());
        }
        self.serve(device_id, kind, stored, payload, out)
    }

    /// Parks what arrived for a device that is not in the store while the uplink claims
    /// it; false without an uplink (the device gets a fresh shadow).
    fn park(&mut self, device_id: &str, item: Parked) -> bool {
        let Some(claims) = &self.claims else {
            return false;
        };
        if let Some(parked) = self.parked.get_mut(device_id) {
            parked.push(item);
            return true;
        }
        if claims.send(device_id.to_string()).is_err() {
            return false;
        }
        self.parked.insert(device_id.to_string(), vec![item]);
        true
    }

    /// Forgets a device's parked requests (its claim's answer could not be applied, or
    /// the claim was shut out); returns how many there were.
    pub fn drop_parked(&mut self, device_id: &str) -> usize {
        self.parked
            .remove(device_id)
            .map_or(0, |parked| parked.len())
    }

    /// Serves a request that passed the rate limit.
    fn serve(
        &mut self,
        device_id: &str,
        kind: ShadowTopic,
        stored: Option<StoredShadow>,
        payload: &[u8],
        out: &mut Vec<Outgoing>,
    ) -> Result<(), StoreError> {
        let last_encoding = stored.as_ref().map(|s| s.encoding).unwrap_or_default();
        let (encoding, request) = match codec::decode_request(payload) {
            Ok((encoding, request)) => (encoding.unwrap_or(last_encoding), request),
            Err(e) => {
                tracing::info!(device_id, %kind, error = %e, "rejected a malformed request");
                out.push(self.replies.rejected(
                    device_id,
                    last_encoding,
                    None,
                    &decode_rejection(&e),
                ));
                return Ok(());
            }
        };
        if let Err(rejection) = check_client_token(request.client_token.as_deref()) {
            out.push(self.replies.rejected(device_id, encoding, None, &rejection));
            return Ok(());
        }
        let token = request.client_token.clone();
        let token = token.as_deref();
        let now = epoch_secs();

        let result = match kind {
            ShadowTopic::Reported | ShadowTopic::Desired => {
                let section = if kind == ShadowTopic::Reported {
                    Section::Reported
                } else {
                    Section::Desired
                };
                match update_of(section, request, now) {
                    Ok(update) => self.update(device_id, encoding, stored, &update, now, out),
                    Err(rejection) => Err(ServiceError::Rejected(rejection)),
                }
            }
            ShadowTopic::Refused => match refusal_of(request) {
                Ok(refusal) => self.refuse(device_id, encoding, stored, &refusal, now, out),
                Err(rejection) => Err(ServiceError::Rejected(rejection)),
            },
            ShadowTopic::Get => self.get(device_id, encoding, stored.as_ref(), token, out),
            _ => self.delete(device_id, encoding, stored.as_ref(), &request, out),
        };
        match result {
            Ok(()) => Ok(()),
            Err(ServiceError::Rejected(rejection)) => {
                tracing::info!(device_id, %kind, code = rejection.code.as_u16(), message = %rejection.message, "rejected a request");
                out.push(
                    self.replies
                        .rejected(device_id, encoding, token, &rejection),
                );
                Ok(())
            }
            Err(ServiceError::Store(e)) => Err(e),
        }
    }

    /// Makes the batch's writes durable; its replies may be published after this returns.
    pub fn commit(&self) -> Result<(), StoreError> {
        self.store.flush()
    }

    fn update(
        &mut self,
        device_id: &str,
        encoding: Encoding,
        stored: Option<StoredShadow>,
        update: &Update,
        now: u64,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), ServiceError> {
        let previous = stored.as_ref().map(|s| &s.document);
        let applied = shadow::apply_update(
            previous,
            update,
            now,
            &self.settings.limits,
            &self.settings.local_wins,
        )
        .map_err(ServiceError::Rejected)?;
        let token = update.client_token.as_deref();
        self.publish(device_id, encoding, stored.as_ref(), applied, token, out)?;
        Ok(())
    }

    /// A device refuses desired leaves: they leave the delta, recorded in the document
    /// (and so in MongoDB) for the app or cloud service that set them.
    fn refuse(
        &mut self,
        device_id: &str,
        encoding: Encoding,
        stored: Option<StoredShadow>,
        refusal: &Refusal,
        now: u64,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), ServiceError> {
        let previous = stored.as_ref().map(|s| &s.document);
        let applied = shadow::refuse(previous, refusal, now, &self.settings.limits)
            .map_err(ServiceError::Rejected)?;
        if applied.changed {
            tracing::info!(device_id, reason = %refusal.reason, code = refusal.code, "the device refused desired values");
        }
        let token = refusal.client_token.as_deref();
        self.publish(device_id, encoding, stored.as_ref(), applied, token, out)?;
        Ok(())
    }

    /// Stores an accepted change (or a device's new encoding), queues it for the cloud,
    /// and appends the document and, when it changed, the retained delta.
    fn publish(
        &mut self,
        device_id: &str,
        encoding: Encoding,
        stored: Option<&StoredShadow>,
        applied: Applied,
        token: Option<&str>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), StoreError> {
        let previous = stored.map(|s| &s.document);
        let encoding_changed = stored.is_some_and(|s| s.encoding != encoding);
        if applied.changed || encoding_changed {
            self.put(
                device_id,
                &StoredShadow {
                    document: applied.document.clone(),
                    encoding,
                },
            )?;
        }
        if applied.changed {
            self.to_cloud(ToCloud::Shadow {
                device_id: device_id.to_string(),
                document: Some(Box::new(applied.document.clone())),
            })?;
        }
        let mut document = self
            .replies
            .document(device_id, encoding, token, &applied.document);
        if applied.changed {
            document.count = Count::ShadowUpdate;
        }
        out.push(document);
        if shadow::delta_state(previous) != shadow::delta_state(Some(&applied.document)) {
            out.push(match &applied.delta {
                Some(delta) => self.replies.publication(
                    device_id,
                    ShadowTopic::Delta,
                    encoding,
                    token,
                    delta,
                    true,
                ),
                None => self.replies.clear_delta(device_id),
            });
        }
        Ok(())
    }

    fn get(
        &self,
        device_id: &str,
        encoding: Encoding,
        stored: Option<&StoredShadow>,
        token: Option<&str>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), ServiceError> {
        let document = shadow::get(stored.map(|s| &s.document)).map_err(ServiceError::Rejected)?;
        out.push(self.replies.document(device_id, encoding, token, document));
        Ok(())
    }

    fn delete(
        &mut self,
        device_id: &str,
        encoding: Encoding,
        stored: Option<&StoredShadow>,
        request: &ShadowRequest,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), ServiceError> {
        let previous = stored.map(|s| &s.document);
        let version = shadow::delete(previous, request.version).map_err(ServiceError::Rejected)?;
        self.store.remove(device_id)?;
        self.to_cloud(ToCloud::Shadow {
            device_id: device_id.to_string(),
            document: None,
        })?;
        let token = request.client_token.as_deref();
        out.push(self.replies.deleted(device_id, encoding, token, version));
        if shadow::delta(previous.unwrap_or(&Document::default())).is_some() {
            out.push(self.replies.clear_delta(device_id));
        }
        Ok(())
    }
}

enum ServiceError {
    Rejected(Rejection),
    Store(StoreError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Store(e)
    }
}

/// The engine's update for a `reported` or `desired` request received at `now`: a
/// desired `expiresIn` becomes an absolute expiry; a report's `timestamp` is the device's
/// time of the change (a desired request counts on arrival, whatever an app's clock says).
fn update_of(section: Section, request: ShadowRequest, now: u64) -> Result<Update, Rejection> {
    let Some(state) = request.state else {
        return Err(Rejection::new(ErrorCode::BadRequest, "missing state"));
    };
    Ok(Update {
        version: request.version,
        client_token: request.client_token,
        expires_at: request.expires_in.map(|secs| now.saturating_add(secs)),
        local_wins: request.local_wins,
        changed_at: request.timestamp.filter(|_| section == Section::Reported),
        ..Update::new(section, state)
    })
}

/// The engine's refusal for a `refused` request: state, reason and code are required.
fn refusal_of(request: ShadowRequest) -> Result<Refusal, Rejection> {
    match (request.state, request.reason, request.code) {
        (Some(state), Some(reason), Some(code)) => Ok(Refusal {
            state,
            reason,
            code,
            client_token: request.client_token,
        }),
        _ => Err(Rejection::new(
            ErrorCode::BadRequest,
            "a refusal needs state, reason and code",
        )),
    }
}

/// Tokens are echoed back in replies; they are bounded like AWS's (64 bytes).
fn check_client_token(token: Option<&str>) -> Result<(), Rejection> {
    match token {
        Some(t) if t.len() > shadow::MAX_CLIENT_TOKEN_BYTES => Err(Rejection::new(
            ErrorCode::BadRequest,
            format!(
                "clientToken is {} bytes, more than {}",
                t.len(),
                shadow::MAX_CLIENT_TOKEN_BYTES
            ),
        )),
        _ => Ok(()),
    }
}

fn decode_rejection(e: &DecodeError) -> Rejection {
    let code = match e.code() {
        415 => ErrorCode::UnsupportedEncoding,
        _ => ErrorCode::BadRequest,
    };
    Rejection {
        code,
        message: e.to_string(),
    }
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}
