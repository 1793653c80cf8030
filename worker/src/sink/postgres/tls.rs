//! TLS to PostgreSQL with libpq's option names and meanings.
//!
//! | `sslmode`          | encrypted                  | server checked                       |
//! |--------------------|----------------------------|--------------------------------------|
//! | `disable`          | never                      | –                                    |
//! | `allow`, `prefer`  | when the server offers it  | no                                   |
//! | `require`          | always                     | no (chain, if `sslrootcert` is set)  |
//! | `verify-ca`        | always                     | chain to `sslrootcert`               |
//! | `verify-full`      | always                     | chain and host name                  |
//!
//! `prefer` is the default, as in libpq. `sslrootcert` is a PEM file or
//! `system` (the platform's trust store); `sslcert`/`sslkey` a client
//! certificate and its key (PEM) for `cert` authentication. The options
//! come from the connection string, else from [`TlsOptions`] defaults
//! (`PGSSLMODE`, `PGSSLROOTCERT`, … as libpq reads them).
//!
//! tokio-postgres knows only disable/prefer/require and none of the file
//! options, so [`split_tls_options`] takes them out of the connection string
//! (both URL and `key=value` forms) and [`connector`] turns them into a
//! rustls verifier. `allow` is treated as `prefer` (it encrypts where libpq
//! would first try plain text). Files are read at every connect, so a
//! rotated certificate takes effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` (the StreamQuery resource's `sslMode` is the same type).
pub use tickflow_crds::PostgresSslMode as SslMode;

/// The TLS options of a connection; `None` where not given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: Option<SslMode>,
    /// A PEM file, or `system`.
    pub root_cert: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl TlsOptions {
    /// These options, with `defaults` where these are not given.
    pub fn or(self, defaults: &TlsOptions) -> TlsOptions {
        TlsOptions {
            mode: self.mode.or(defaults.mode),
            root_cert: self.root_cert.or_else(|| defaults.root_cert.clone()),
            client_cert: self.client_cert.or_else(|| defaults.client_cert.clone()),
            client_key: self.client_key.or_else(|| defaults.client_key.clone()),
        }
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), String> {
        match key {
            "sslmode" => self.mode = Some(value.parse()?),
            "sslrootcert" => self.root_cert = Some(value),
            "sslcert" => self.client_cert = Some(value.into()),
            "sslkey" => self.client_key = Some(value.into()),
            _ => unreachable!("not a TLS option: {key}"),
        }
        Ok(())
    }
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// The connection string without its TLS options, and the options.
pub fn split_tls_options(conninfo: &str) -> Result<(String, TlsOptions), String> {
    let mut options = TlsOptions::default();
    let rest = if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        split_url(conninfo, &mut options)?
    } else {
        split_key_values(conninfo, &mut options)?
    };
    Ok((rest, options))
}

/// `postgres://…?a=b&sslmode=c` → `postgres://…?a=b`.
fn split_url(url: &str, options: &mut TlsOptions) -> Result<String, String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(url.to_string());
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if TLS_KEYS.contains(&key) {
            let value = pair.split_once('=').map_or("", |(_, v)| v);
            options.set(key, percent_decode(value)?)?;
        } else {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in the PostgreSQL URL: `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the PostgreSQL URL decodes to invalid UTF-8".to_string())
}

/// `host=h sslmode='verify-full' dbname=d` → `host=h dbname=d`; values may
/// be single-quoted with `\'` and `\\` escapes, as libpq allows.
fn split_key_values(conninfo: &str, options: &mut TlsOptions) -> Result<String, String> {
    let mut kept: Vec<&str> = Vec::new();
    let mut rest = conninfo.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or_else(|| {
            format!(
                "`{}` has no `=` in the PostgreSQL connection string",
                rest.split_whitespace().next().unwrap_or(rest)
            )
        })?;
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let (value, len) = key_value_value(after)?;
        let end = rest.len() - after.len() + len;
        if TLS_KEYS.contains(&key) {
            options.set(key, value)?;
        } else {
            kept.push(&rest[..end]);
        }
        rest = rest[end..].trim_start();
    }
    Ok(kept.join(" "))
}

/// The value at the start of `s` and how many bytes it spans.
fn key_value_value(s: &str) -> Result<(String, usize), String> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    let quoted = s.starts_with('\'');
    if quoted {
        chars.next();
    }
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => value.push(escaped),
                None => break,
            },
            '\'' if quoted => return Ok((value, i + 1)),
            c if !quoted && c.is_whitespace() => return Ok((value, i)),
            c => value.push(c),
        }
    }
    if quoted {
        return Err("an unterminated quoted value in the PostgreSQL connection string".into());
    }
    Ok((value, s.len()))
}

/// What tokio-postgres is told, and the rustls connector that does the rest.
pub fn connector(
    options: &TlsOptions,
) -> Result<(postgres::config::SslMode, MakeRustlsConnect), String> {
    use postgres::config::SslMode as Wire;
    let mode = options.mode.unwrap_or(SslMode::Prefer);
    // libpq: `require` with a root certificate verifies the chain.
    let mode = match (mode, &options.root_cert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (m, _) => m,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer | SslMode::Require => {
            Arc::new(EncryptOnly(provider.clone()))
        }
        SslMode::VerifyCa => Arc::new(ChainOnly(chain_verifier(options, mode, &provider)?)),
        SslMode::VerifyFull => chain_verifier(options, mode, &provider)?,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&options.client_cert, &options.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certificates(cert, "sslcert")?, read_key(key)?)
            .map_err(|e| {
                format!(
                    "sslcert {} and sslkey {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?,
        _ => return Err("sslcert and sslkey go together: give both or neither".into()),
    };
    let wire = match mode {
        SslMode::Disable => Wire::Disable,
        SslMode::Allow | SslMode::Prefer => Wire::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Wire::Require,
    };
    Ok((wire, MakeRustlsConnect::new(config)))
}

/// The verifier of the chain (and host name) against `sslrootcert`.
fn chain_verifier(
    options: &TlsOptions,
    mode: SslMode,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    match options.root_cert.as_deref() {
        None => Err(format!(
            "sslmode={} needs sslrootcert: a PEM file of the CA, or `system` for the system's trust store",
            mode.as_str()
        )),
        Some("system") => rustls_platform_verifier::Verifier::new(provider.clone())
            .map(|v| Arc::new(v) as Arc<dyn ServerCertVerifier>)
            .map_err(|e| format!("the system trust store: {e}")),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(Path::new(path), "sslrootcert")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.into(),
                provider.clone(),
            )
            .build()
            .map(|v| v as Arc<dyn ServerCertVerifier>)
            .map_err(|e| format!("sslrootcert {path}: {e}"))
        }
    }
}

fn read_certificates(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{option} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{option} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("sslkey {}: {e}", path.display()))
}

/// `require` (and `prefer`): the connection is encrypted and the server
/// proves it holds the certificate's key, but the certificate itself is not
/// checked, as libpq does without a root certificate.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full check, except that a certificate for another host
/// name is accepted (webpki checks the name only after the chain).
#[derive(Debug)]
struct ChainOnly(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_taken_out_and_decoded() {
        let (rest, o) = split_tls_options(
            "postgres://u@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u@h:5/db?application_name=x");
        assert_eq!(o.mode, Some(SslMode::VerifyFull));
        assert_eq!(o.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (rest, o) = split_tls_options("postgresql://u@h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), o.mode),
            ("postgresql://u@h/db", Some(SslMode::Require))
        );
    }

    #[test]
    fn key_value_options_are_taken_out_with_quotes_and_escapes() {
        let (rest, o) = split_tls_options(
            "host=h  sslmode = verify-ca user='a b' sslrootcert='/x/it\\'s ca.pem' dbname=d",
        )
        .unwrap();
        assert_eq!(rest, "host=h user='a b' dbname=d");
        assert_eq!(o.mode, Some(SslMode::VerifyCa));
        assert_eq!(o.root_cert.as_deref(), Some("/x/it's ca.pem"));
        assert!(split_tls_options("host=h sslrootcert='/x").is_err());
    }

    #[test]
    fn bad_values_are_refused_with_the_choices() {
        let e = split_tls_options("postgres://h/db?sslmode=verify").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        let e = split_tls_options("postgres://h/db?sslrootcert=%zz").unwrap_err();
        assert!(e.contains("percent"), "{e}");
    }

    #[test]
    fn the_connection_string_beats_the_environment() {
        let env = TlsOptions {
            mode: Some(SslMode::Require),
            root_cert: Some("/env/ca.pem".into()),
            ..TlsOptions::default()
        };
        let (_, url) = split_tls_options("postgres://h/db?sslmode=disable").unwrap();
        let merged = url.or(&env);
        assert_eq!(merged.mode, Some(SslMode::Disable));
        assert_eq!(merged.root_cert.as_deref(), Some("/env/ca.pem"));
    }

    #[test]
    fn modes_map_to_what_tokio_postgres_negotiates() {
        use postgres::config::SslMode as Wire;
        let wire = |mode| {
            connector(&TlsOptions {
                mode,
                ..TlsOptions::default()
            })
            .map(|(w, _)| w)
        };
        assert_eq!(wire(None).unwrap(), Wire::Prefer);
        assert_eq!(wire(Some(SslMode::Allow)).unwrap(), Wire::Prefer);
        assert_eq!(wire(Some(SslMode::Disable)).unwrap(), Wire::Disable);
        assert_eq!(wire(Some(SslMode::Require)).unwrap(), Wire::Require);
        let e = wire(Some(SslMode::VerifyFull)).err().unwrap();
        assert!(e.contains("needs sslrootcert"), "{e}");
        let e = connector(&TlsOptions {
            mode: Some(SslMode::Require),
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        })
        .err()
        .unwrap();
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
        let e = connector(&TlsOptions {
            client_cert: Some("/c.pem".into()),
            ..TlsOptions::default()
        })
        .err()
        .unwrap();
        assert!(e.contains("give both"), "{e}");
    }
}
