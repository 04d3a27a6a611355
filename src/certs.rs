//! TLS material: the startup checks of `[mqtt] cert`/`key`/`client_ca`, the CN of a client
//! certificate (a device's identity in certificate mode), and `certs dev`, which makes a
//! throwaway CA, a server certificate and device certificates for the lab.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Unreadable {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(String),
    #[error("{0}: not a valid X.509 certificate")]
    BadCertificate(String),
    #[error("{0}: no PEM private key in it")]
    NoKey(String),
    #[error("mqtt.cert {cert} and mqtt.key {key} do not belong together (different public keys)")]
    Mismatch { cert: String, key: String },
    #[error("generating certificates: {0}")]
    Generate(String),
    #[error("{path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Unreadable {
        path: path.display().to_string(),
        source,
    })
}

/// The files a TLS listener needs (`mqtt.cert`, `key`, and `client_ca` when set), checked
/// at startup and by `check-config`; nothing to check without `tls_listen`.
pub fn check_tls_files(mqtt: &crate::config::MqttSection) -> Result<(), CertError> {
    if mqtt.tls_listen.is_none() {
        return Ok(());
    }
    check_server_identity(Path::new(&mqtt.cert), Path::new(&mqtt.key))?;
    if let Some(client_ca) = &mqtt.client_ca {
        check_client_ca(Path::new(client_ca))?;
    }
    Ok(())
}

/// Checks `mqtt.client_ca` before the listener starts: readable, with at least one
/// certificate, all of them valid X.509.
pub fn check_client_ca(ca: &Path) -> Result<usize, CertError> {
    let pem = read(ca)?;
    let name = ca.display().to_string();
    let mut count = 0;
    for der in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der = der.map_err(|_| CertError::BadCertificate(name.clone()))?;
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|_| CertError::BadCertificate(name.clone()))?;
        count += 1;
    }
    if count == 0 {
        return Err(CertError::NoCertificate(name));
    }
    Ok(count)
}

/// The subject CN of a DER certificate: in certificate mode, who the client is.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Checks the server certificate and key before the listener starts, so a wrong path or a
/// key of another certificate is a clear startup error rather than a listener that dies.
pub fn check_server_identity(cert: &Path, key: &Path) -> Result<(), CertError> {
    let cert_pem = read(cert)?;
    let cert_name = cert.display().to_string();
    let first = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| CertError::NoCertificate(cert_name.clone()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first.as_ref())
        .map_err(|_| CertError::BadCertificate(cert_name.clone()))?;
    let key_pem = read(key)?;
    let key_name = key.display().to_string();
    if !matches!(
        rustls_pemfile::private_key(&mut key_pem.as_slice()),
        Ok(Some(_))
    ) {
        return Err(CertError::NoKey(key_name));
    }
    // The pairing check needs a key format ring reads (PKCS#8); others are left to rustls.
    let key_text = String::from_utf8_lossy(&key_pem);
    if let Ok(pair) = KeyPair::from_pem(&key_text) {
        if pair.public_key_der() != parsed.tbs_certificate.subject_pki.raw {
            return Err(CertError::Mismatch {
                cert: cert_name,
                key: key_name,
            });
        }
    }
    Ok(())
}

/// Writes `ca.crt/.key`, `server.crt/.key` (SANs `localhost`, `127.0.0.1`, `::1`) and one
/// `<device>.crt/.key` per device (CN = device id) into `out`. For the lab only.
pub fn generate_dev(out: &Path, devices: &[String]) -> Result<Vec<PathBuf>, CertError> {
    let gen = |e: rcgen::Error| CertError::Generate(e.to_string());
    std::fs::create_dir_all(out).map_err(|source| CertError::Write {
        path: out.display().to_string(),
        source,
    })?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: String| -> Result<(), CertError> {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|source| CertError::Write {
            path: path.display().to_string(),
            source,
        })?;
        written.push(path);
        Ok(())
    };

    let ca_key = KeyPair::generate().map_err(gen)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "iotsphere-gateway dev CA (lab only)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(gen)?;
    write("ca.crt", ca.pem())?;
    write("ca.key", ca_key.serialize_pem())?;

    let server_key = KeyPair::generate().map_err(gen)?;
    let mut server_params = CertificateParams::new(vec!["localhost".to_string()]).map_err(gen)?;
    for ip in ["127.0.0.1", "::1"] {
        if let Ok(ip) = ip.parse() {
            server_params.subject_alt_names.push(SanType::IpAddress(ip));
        }
    }
    server_params
        .distinguished_name
        .push(DnType::CommonName, "iotsphere-gateway");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params
        .signed_by(&server_key, &ca, &ca_key)
        .map_err(gen)?;
    write("server.crt", server.pem())?;
    write("server.key", server_key.serialize_pem())?;

    for device in devices {
        let key = KeyPair::generate().map_err(gen)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        params
            .distinguished_name
            .push(DnType::CommonName, device.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(gen)?;
        write(&format!("{device}.crt"), cert.pem())?;
        write(&format!("{device}.key"), key.serialize_pem())?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_pass_the_check_and_mismatches_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = generate_dev(dir.path(), &["heater-1".to_string()]).expect("generate");
        assert_eq!(files.len(), 6);
        let server_crt = dir.path().join("server.crt");
        let server_key = dir.path().join("server.key");
        check_server_identity(&server_crt, &server_key).expect("a matching pair");
        assert!(matches!(
            check_server_identity(&server_crt, &dir.path().join("heater-1.key")),
            Err(CertError::Mismatch { .. })
        ));
        assert!(matches!(
            check_server_identity(&dir.path().join("missing.crt"), &server_key),
            Err(CertError::Unreadable { .. })
        ));
        assert!(matches!(
            check_server_identity(&server_key, &server_key),
            Err(CertError::NoCertificate(_))
        ));
        assert!(matches!(
            check_server_identity(&server_crt, &server_crt),
            Err(CertError::NoKey(_))
        ));
        assert_eq!(check_client_ca(&dir.path().join("ca.crt")).expect("ca"), 1);
        assert!(matches!(
            check_client_ca(&server_key),
            Err(CertError::NoCertificate(_))
        ));
    }

    #[test]
    fn a_device_certificate_names_its_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_dev(dir.path(), &["heater-7".to_string()]).expect("generate");
        let pem = std::fs::read(dir.path().join("heater-7.crt")).expect("read");
        let der = rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .expect("one certificate")
            .expect("PEM");
        assert_eq!(common_name(der.as_ref()).as_deref(), Some("heater-7"));
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
