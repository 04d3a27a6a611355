//! The rumqttc connection options from `[bridge]`: address, session, credentials, TLS.
//!
//! TLS is rustls with the *ring* provider given explicitly — the one the rest of the
//! gateway uses (mongodb) — so no second crypto stack is linked and nothing depends on a
//! process-wide default provider being installed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::BridgeError;
use crate::config::BridgeSection;

/// Upstream packets may carry a device payload plus the prefix and the MQTT header.
const PACKET_OVERHEAD: usize = 64 * 1024;

/// Builds the options; files (CA, client certificate, password) are read now, so a wrong
/// path is a startup error naming the key.
pub fn mqtt_options(
    bridge: &BridgeSection,
    max_payload_bytes: usize,
) -> Result<MqttOptions, BridgeError> {
    let url = bridge
        .parsed_url()
        .map_err(|message| BridgeError::Config("bridge.url", message))?;
    let mut options = MqttOptions::new(&bridge.client_id, &url.host, url.port);
    options.set_keep_alive(Duration::from_secs(bridge.keepalive_secs.into()));
    // The upstream broker keeps our subscriptions and queues for us while we are away.
    options.set_clean_session(false);
    // Incoming publishes are acknowledged once they are handed to the local broker.
    options.set_manual_acks(true);
    let max_packet = max_payload_bytes + PACKET_OVERHEAD;
    options.set_max_packet_size(max_packet, max_packet);
    if let Some(username) = &bridge.username {
        let password = match &bridge.password_file {
            Some(file) => read_password(Path::new(file))?,
            None => String::new(),
        };
        options.set_credentials(username, password);
    }
    if url.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(client_config(bridge)?),
        )));
    }
    Ok(options)
}

fn read_password(path: &Path) -> Result<String, BridgeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BridgeError::Config("bridge.password_file", file_error(path, &e)))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

fn client_config(bridge: &BridgeSection) -> Result<rustls::ClientConfig, BridgeError> {
    let ca_path = Path::new(bridge.ca_file.as_deref().unwrap_or_default());
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates("bridge.ca_file", ca_path)? {
        roots.add(cert).map_err(|e| {
            BridgeError::Config("bridge.ca_file", format!("{}: {e}", ca_path.display()))
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BridgeError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let Some(client_cert) = &bridge.client_cert else {
        return Ok(builder.with_no_client_auth());
    };
    let cert_path = Path::new(client_cert);
    let chain = read_certificates("bridge.client_cert", cert_path)?;
    let key_path = Path::new(bridge.client_key.as_deref().unwrap_or_default());
    let key = read_key(key_path)?;
    builder.with_client_auth_cert(chain, key).map_err(|e| {
        BridgeError::Config("bridge.client_key", format!("{}: {e}", key_path.display()))
    })
}

fn read_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, BridgeError> {
    let pem = std::fs::read(path).map_err(|e| BridgeError::Config(key, file_error(path, &e)))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BridgeError::Config(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(BridgeError::Config(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, BridgeError> {
    let key = "bridge.client_key";
    let pem = std::fs::read(path).map_err(|e| BridgeError::Config(key, file_error(path, &e)))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| {
            BridgeError::Config(key, format!("{}: no PEM private key in it", path.display()))
        })
}

fn file_error(path: &Path, e: &std::io::Error) -> String {
    format!("{}: {e}", path.display())
}
