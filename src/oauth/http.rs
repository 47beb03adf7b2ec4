//! Form POSTs to an identity provider (token and device endpoints), with reqwest: it is
//! already the push client's HTTP stack (rustls, no OpenSSL), and the requests are two plain
//! form posts whose JSON answers are read by `token` (the `oauth2` crate would bring a second
//! reqwest and parse the answers out of reach of our fuzz target). No redirects (a token
//! request is never forwarded), a time limit, and an answer size limit. Nothing sent or
//! received is logged; errors name the endpoint's origin only.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::secret::Secret;

/// Longest answer read from an identity provider.
const MAX_BODY: usize = 64 * 1024;
/// Time allowed for one request, connecting included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    #[error("cannot set up the HTTP client: {0}")]
    Client(Arc<dyn std::error::Error + Send + Sync>),
    #[error("cannot reach {origin}: {detail}")]
    Network { origin: String, detail: String },
    #[error("{origin} sent an answer larger than {MAX_BODY} bytes")]
    TooLarge { origin: String },
}

/// An answer: HTTP status and body (which may hold tokens, so it is wiped).
pub struct Answer {
    pub status: u16,
    pub body: Secret,
}

fn client() -> Result<&'static reqwest::Client, HttpError> {
    type SetupError = Arc<dyn std::error::Error + Send + Sync>;
    type Built = Result<reqwest::Client, SetupError>;
    static CLIENT: OnceLock<Built> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let tls = crate::tls::https_client_config().map_err(|e| Arc::new(e) as SetupError)?;
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(10))
                .timeout(TIMEOUT)
                .user_agent(concat!("coi-proxy/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| Arc::new(e) as SetupError)
        })
        .as_ref()
        .map_err(|e| HttpError::Client(e.clone()))
}

/// `scheme://host[:port]` of `url`, for error texts (never the path or query).
pub fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "the identity provider".into(),
    }
}

/// POSTs `form` (application/x-www-form-urlencoded) to `url` and reads the answer.
pub async fn post_form(url: &str, form: &[(&str, &[u8])]) -> Result<Answer, HttpError> {
    let origin = origin(url);
    let body = {
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in form {
            // Values are ASCII tokens and codes in practice; anything else is sent as UTF-8 text.
            body.append_pair(key, &String::from_utf8_lossy(value));
        }
        Secret::new(body.finish().into_bytes())
    };
    let network = |e: reqwest::Error| HttpError::Network { origin: origin.clone(), detail: describe(e) };
    let mut response = client()?
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body.expose().to_vec())
        .send()
        .await
        .map_err(network)?;
    let status = response.status().as_u16();
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(network)? {
        if out.len() + chunk.len() > MAX_BODY {
            let _ = Secret::new(out);
            return Err(HttpError::TooLarge { origin });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Answer { status, body: Secret::new(out) })
}

/// A reqwest error without its URL (the origin is said already), with its causes.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = if e.is_timeout() { "timed out".to_string() } else { e.to_string() };
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
