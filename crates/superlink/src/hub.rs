//! Runs of apps from Flower Hub (`flwr run @account/app==1.2.3`), fetched as Flower 1.28.0's
//! SuperLink fetches them: the Platform API's `POST <url>/hub/fetch-fab` (JSON: the app id, the
//! version or `null` for the latest, Flower's version) answers a download URL and the app's
//! verifications (publisher signatures); the FAB is downloaded from that URL and stored with the
//! verifications, which `GetFab` hands to SuperNodes (`--trusted-entities` checks them). The
//! Platform API's address is `--platform-api-url` (Flower's is fixed); every failure is
//! FAILED_PRECONDITION with Flower's text.

use std::time::Duration;

use bytes::Bytes;
use flwr_state::Verifications;
use flwr_transport::rest::{error_chain, url_client, UrlConnector};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use tokio::sync::OnceCell;

/// Flower's Platform API.
pub const DEFAULT_PLATFORM_API_URL: &str = "https://api.flower.ai/v1";

/// How long each Platform API call may take (Flower: 20 s for the link, 60 s for the FAB).
const LINK_TIMEOUT: Duration = Duration::from_secs(20);
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// The most a Platform API answer may hold (a link and a few signatures).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why an app could not be fetched from Flower Hub (Flower's texts).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The version is not x.y.z.
    #[error("Invalid app version. Expected format: x.y.z (digits only).")]
    InvalidVersion,
    /// The app id is not `@account/app`.
    #[error("Invalid remote app ID. Expected format: '@account_name/app_name'.")]
    InvalidAppId,
    /// The Platform API cannot be reached.
    #[error("Unable to connect to Platform API: {0}")]
    Unreachable(String),
    /// No such app.
    #[error("{0} not found in Platform API.")]
    NotFound(String),
    /// No such version of the app.
    #[error(
        "{app_id}=={version} not found in Platform API. Available app versions for {app_id}: {available}"
    )]
    VersionNotFound {
        /// The app.
        app_id: String,
        /// The version asked for.
        version: String,
        /// The versions there are, or `None`.
        available: String,
    },
    /// Another answer than 200.
    #[error("Platform API request failed with status {status}. Details: {details}")]
    Failed {
        /// The HTTP status code.
        status: u16,
        /// The answer's text.
        details: String,
    },
    /// An answer without a download link.
    #[error("Invalid response from Platform API")]
    InvalidResponse,
    /// The FAB's download failed.
    #[error("FAB download failed: {0}")]
    Download(String),
    /// The system's trusted certificates (for `https://`) cannot be loaded.
    #[error("Unable to connect to Platform API: the system's trusted certificates: {0}")]
    Tls(String),
}

/// `@account/app` (`^@[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$`).
fn valid_app_id(id: &str) -> bool {
    let part = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    id.strip_prefix('@')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(account, app)| part(account) && part(app))
}

/// `x.y.z`, digits only.
fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `@account/app[==x.y.z]` as the app id and the version (`None`: the latest).
pub fn parse_app_spec(spec: &str) -> Result<(&str, Option<&str>), HubError> {
    let (id, version) = match spec.split_once("==") {
        Some((id, version)) => {
            if !valid_version(version) {
                return Err(HubError::InvalidVersion);
            }
            (id, Some(version))
        }
        None => (spec, None),
    };
    if !valid_app_id(id) {
        return Err(HubError::InvalidAppId);
    }
    Ok((id, version))
}

type Record = serde_json::Map<String, serde_json::Value>;

/// Flower's verifications map: each record under its `public_key_id`, the rest of it as JSON,
/// and `valid_license` ("Valid" when the answer had verifications, empty when it had none).
fn verification_map(records: Option<Vec<Record>>) -> Verifications {
    let Some(records) = records else {
        return [("valid_license".to_owned(), String::new())].into();
    };
    let mut map = Verifications::new();
    for mut record in records {
        let id = match record.remove("public_key_id") {
            Some(serde_json::Value::String(id)) => id,
            Some(other) => other.to_string(),
            None => continue,
        };
        map.insert(id, serde_json::Value::Object(record).to_string());
    }
    map.insert("valid_license".to_owned(), "Valid".to_owned());
    map
}

/// The Platform API client.
pub struct Hub {
    url: String,
    client: OnceCell<Client<UrlConnector, Full<Bytes>>>,
}

impl Hub {
    /// A client of the Platform API at `url` (`https://api.flower.ai/v1` in Flower).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into().trim_end_matches('/').to_owned(),
            client: OnceCell::new(),
        }
    }

    /// The HTTP client, made at first use (loading the system's certificates takes a moment).
    async fn client(&self) -> Result<&Client<UrlConnector, Full<Bytes>>, HubError> {
        self.client
            .get_or_try_init(|| async {
                let choice = flwr_transport::tls::ClientTlsChoice::SystemRoots;
                let loaded = tokio::task::spawn_blocking(move || {
                    flwr_transport::tls::load_client_config(&choice)
                })
                .await
                .map_err(|e| HubError::Tls(e.to_string()))?
                .map_err(|e| HubError::Tls(e.to_string()))?
                .ok_or_else(|| HubError::Tls("none".to_owned()))?;
                Ok(url_client(loaded.config))
            })
            .await
    }

    /// One HTTP exchange: the status and at most `limit` bytes of the answer.
    async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
        limit: usize,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let client = self.client().await.map_err(|e| e.to_string())?;
        let call = async {
            let response = client.request(request).await.map_err(|e| error_chain(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    /// The FAB of `app_spec` and its verifications.
    pub async fn fetch(&self, app_spec: &str) -> Result<(Bytes, Verifications), HubError> {
        let (app_id, version) = parse_app_spec(app_spec)?;
        let body = serde_json::json!({
            "app_id": app_id,
            "app_version": version,
            "flwr_version": flwr_daemon::FLOWER_VERSION,
        });
        let mut request = http::Request::new(Full::new(Bytes::from(body.to_string())));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = format!("{}/hub/fetch-fab", self.url)
            .parse()
            .map_err(|e: http::uri::InvalidUri| HubError::Unreachable(e.to_string()))?;
        for h in [http::header::CONTENT_TYPE, http::header::ACCEPT] {
            request
                .headers_mut()
                .insert(h, http::HeaderValue::from_static("application/json"));
        }
        let (status, answer) = self
            .exchange(request, MAX_ANSWER_BYTES, LINK_TIMEOUT)
            .await
            .map_err(HubError::Unreachable)?;
        if status == http::StatusCode::NOT_FOUND {
            return Err(not_found(app_id, version, &answer));
        }
        if !status.is_success() {
            return Err(HubError::Failed {
                status: status.as_u16(),
                details: String::from_utf8_lossy(&answer).into_owned(),
            });
        }
        let link: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|_| HubError::InvalidResponse)?;
        let url = match link.get("fab_url") {
            Some(serde_json::Value::String(u)) => u.clone(),
            Some(other) => other.to_string(),
            None => return Err(HubError::InvalidResponse),
        };
        let records = link
            .get("verifications")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_object().cloned())
                    .collect::<Vec<Record>>()
            });
        let verifications = verification_map(records);
        let mut download = http::Request::new(Full::new(Bytes::new()));
        *download.uri_mut() = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| HubError::Download(e.to_string()))?;
        // One byte over the FAB limit is enough to refuse it as Flower does (after download).
        let (status, fab) = self
            .exchange(download, flwr_fab::FAB_MAX_SIZE + 1, DOWNLOAD_TIMEOUT)
            .await
            .map_err(HubError::Download)?;
        if !status.is_success() {
            return Err(HubError::Download(format!("{status} for url: {url}")));
        }
        Ok((fab, verifications))
    }
}

/// Flower's texts for a 404: the app, or the version with the ones there are.
fn not_found(app_id: &str, version: Option<&str>, answer: &[u8]) -> HubError {
    let detail = serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v.get("detail").cloned());
    match detail {
        Some(serde_json::Value::Object(d)) => {
            let available = d
                .get("available_app_versions")
                .and_then(|v| v.as_array())
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "None".to_owned());
            HubError::VersionNotFound {
                app_id: app_id.to_owned(),
                version: version.unwrap_or("None").to_owned(),
                available,
            }
        }
        _ => HubError::NotFound(app_id.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_specs_as_flower_reads_them() {
        assert_eq!(
            parse_app_spec("@acme/app==1.2.3").unwrap(),
            ("@acme/app", Some("1.2.3"))
        );
        assert_eq!(parse_app_spec("@a.b-c_d/x").unwrap(), ("@a.b-c_d/x", None));
        for bad in ["acme/app", "@acme", "@acme/", "@ac me/app", "@acme/app/x"] {
            assert!(
                matches!(parse_app_spec(bad), Err(HubError::InvalidAppId)),
                "{bad}"
            );
        }
        for bad in ["@acme/app==1.2", "@acme/app==1.2.x", "@acme/app==v1.2.3"] {
            assert!(
                matches!(parse_app_spec(bad), Err(HubError::InvalidVersion)),
                "{bad}"
            );
        }
    }

    #[test]
    fn verifications_as_flower_formats_them() {
        let records: Vec<Record> = serde_json::from_str(
            r#"[{"public_key_id": "fpk_1", "signature": "c2ln", "signed_at": 5}]"#,
        )
        .unwrap();
        let map = verification_map(Some(records));
        assert_eq!(map["valid_license"], "Valid");
        let record: serde_json::Value = serde_json::from_str(&map["fpk_1"]).unwrap();
        assert_eq!(
            record,
            serde_json::json!({"signature": "c2ln", "signed_at": 5})
        );
        assert_eq!(verification_map(None)["valid_license"], "");
    }

    #[test]
    fn a_404_names_the_versions_there_are() {
        let e = not_found(
            "@a/b",
            Some("9.9.9"),
            br#"{"detail": {"available_app_versions": ["1.0.0", "1.1.0"]}}"#,
        );
        assert_eq!(
            e.to_string(),
            "@a/b==9.9.9 not found in Platform API. Available app versions for @a/b: 1.0.0, 1.1.0"
        );
        assert_eq!(
            not_found("@a/b", None, b"nope").to_string(),
            "@a/b not found in Platform API."
        );
    }
}
