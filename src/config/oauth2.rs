//! `[account.oauth2]`: an account whose provider wants OAuth2 (Gmail, Microsoft 365 /
//! Outlook.com). The keys are the issue's; `provider = "microsoft" | "google"` fills in the
//! endpoints and scopes (any key given overrides the preset's). No client id is shipped: the user
//! registers their own app (README, "OAuth2").

use serde::Deserialize;

/// The table as written in proxy.toml.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2 {
    /// `microsoft` or `google`: the endpoints and scopes of that provider.
    pub provider: Option<String>,
    /// RFC 8628 device authorization endpoint; with it, `oauth authorize` uses the device flow.
    pub device_authorization_url: Option<String>,
    /// Authorization endpoint for the browser flow (PKCE, loopback redirect).
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    /// The user's own app registration.
    pub client_id: String,
    /// Only for registrations that have one (Google's desktop apps); never logged.
    pub client_secret: Option<String>,
    /// Space-separated scopes.
    pub scope: Option<String>,
}

impl std::fmt::Debug for OAuth2 {
    /// Without the client secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2")
            .field("provider", &self.provider)
            .field("device_authorization_url", &self.device_authorization_url)
            .field("authorization_url", &self.authorization_url)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "<redacted>"))
            .field("scope", &self.scope)
            .finish()
    }
}

/// A provider's endpoints and scopes.
struct Preset {
    name: &'static str,
    device_authorization_url: Option<&'static str>,
    authorization_url: &'static str,
    token_url: &'static str,
    scope: &'static str,
    /// Extra parameters of the authorization request.
    authorize_params: &'static [(&'static str, &'static str)],
}

/// Microsoft: the `common` tenant (work, school and personal accounts; a tenant of one's own is
/// given by writing the URLs out); device flow by default. `offline_access` is what yields a
/// refresh token. Google: no device flow for the Gmail scope, so the browser flow; a refresh
/// token comes only with `access_type=offline`, and reliably only with `prompt=consent`.
const PRESETS: &[Preset] = &[
    Preset {
        name: "microsoft",
        device_authorization_url: Some("https://login.microsoftonline.com/common/oauth2/v2.0/devicecode"),
        authorization_url: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_url: "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        scope: "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send offline_access",
        authorize_params: &[],
    },
    Preset {
        name: "google",
        device_authorization_url: None,
        authorization_url: "https://accounts.google.com/o/oauth2/v2/auth",
        token_url: "https://oauth2.googleapis.com/token",
        scope: "https://mail.google.com/",
        authorize_params: &[("access_type", "offline"), ("prompt", "consent")],
    },
];

/// Everything the flows and the refresh need, presets applied.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub device_authorization_url: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: String,
    pub scope: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub authorize_params: Vec<(String, String)>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("device_authorization_url", &self.device_authorization_url)
            .field("authorization_url", &self.authorization_url)
            .field("token_url", &self.token_url)
            .field("scope", &self.scope)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl OAuth2 {
    /// The endpoints with the preset applied; `Err` names the key at fault and why.
    pub fn endpoints(&self) -> Result<Endpoints, (&'static str, String)> {
        let preset = match &self.provider {
            None => None,
            Some(name) => Some(PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name)).ok_or_else(|| {
                let known = PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
                ("provider", format!("unknown provider `{name}`; known: {known} (or leave it out and give the URLs)"))
            })?),
        };
        let pick = |own: &Option<String>, preset: Option<&str>| own.clone().or(preset.map(str::to_string));
        let device_authorization_url =
            pick(&self.device_authorization_url, preset.and_then(|p| p.device_authorization_url));
        let authorization_url = pick(&self.authorization_url, preset.map(|p| p.authorization_url));
        let token_url = pick(&self.token_url, preset.map(|p| p.token_url))
            .ok_or(("token_url", "needed (or `provider = \"microsoft\"` / `\"google\"`)".to_string()))?;
        let scope = pick(&self.scope, preset.map(|p| p.scope))
            .ok_or(("scope", "needed (or `provider = \"microsoft\"` / `\"google\"`)".to_string()))?;
        if device_authorization_url.is_none() && authorization_url.is_none() {
            return Err((
                "authorization_url",
                "give device_authorization_url (device flow) or authorization_url (browser flow)".into(),
            ));
        }
        for (key, url) in [
            ("device_authorization_url", device_authorization_url.as_deref()),
            ("authorization_url", authorization_url.as_deref()),
            ("token_url", Some(token_url.as_str())),
        ] {
            if let Some(url) = url {
                check_url(url).map_err(|why| (key, why))?;
            }
        }
        if self.client_id.trim().is_empty() {
            return Err(("client_id", "must not be empty: the id of your own app registration".into()));
        }
        if scope.split_whitespace().next().is_none() {
            return Err(("scope", "must name at least one scope".into()));
        }
        Ok(Endpoints {
            device_authorization_url,
            authorization_url,
            token_url,
            scope,
            client_id: self.client_id.trim().to_string(),
            client_secret: self.client_secret.clone().filter(|s| !s.is_empty()),
            authorize_params: preset
                .map(|p| p.authorize_params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
                .unwrap_or_default(),
        })
    }
}

/// `https://`, or `http://` to a loopback address (a local identity provider): tokens never
/// cross a network in clear.
fn check_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!("`{text}` would send tokens unencrypted; use https:// (http:// only to loopback)")),
        _ => Err(format!("`{text}` must be an https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(toml_text: &str) -> OAuth2 {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn presets_fill_and_keys_override() {
        let ms = oauth("provider = \"Microsoft\"\nclient_id = \"abc\"\n").endpoints().unwrap();
        assert!(ms.device_authorization_url.as_deref().unwrap().ends_with("/common/oauth2/v2.0/devicecode"));
        assert!(ms.scope.contains("IMAP.AccessAsUser.All") && ms.scope.contains("offline_access"));
        assert!(ms.authorize_params.is_empty());
        let tenant = oauth(
            "provider = \"microsoft\"\nclient_id = \"abc\"\ntoken_url = \"https://login.microsoftonline.com/t1/oauth2/v2.0/token\"\n",
        )
        .endpoints()
        .unwrap();
        assert!(tenant.token_url.contains("/t1/"));
        let google =
            oauth("provider = \"google\"\nclient_id = \"x.apps.googleusercontent.com\"\nclient_secret = \"s\"\n")
                .endpoints()
                .unwrap();
        assert_eq!(google.device_authorization_url, None);
        assert_eq!(google.scope, "https://mail.google.com/");
        assert!(google.authorize_params.contains(&("prompt".into(), "consent".into())));
        assert_eq!(google.client_secret.as_deref(), Some("s"));
    }

    #[test]
    fn problems_name_their_key() {
        let err = |t: &str| oauth(t).endpoints().unwrap_err();
        assert_eq!(err("provider = \"yahoo\"\nclient_id = \"a\"\n").0, "provider");
        assert_eq!(err("client_id = \"a\"\nscope = \"s\"\n").0, "token_url");
        assert_eq!(err("client_id = \"a\"\ntoken_url = \"https://x/t\"\nscope = \"s\"\n").0, "authorization_url");
        let (key, why) = err(
            "client_id = \"a\"\ntoken_url = \"http://idp.example/t\"\nscope = \"s\"\nauthorization_url = \"https://x/a\"\n",
        );
        assert_eq!(key, "token_url");
        assert!(why.contains("unencrypted"), "{why}");
        assert_eq!(err("provider = \"google\"\nclient_id = \" \"\n").0, "client_id");
        let local = oauth(
            "client_id = \"a\"\ntoken_url = \"http://127.0.0.1:9/t\"\ndevice_authorization_url = \"http://localhost:9/d\"\nscope = \"mail\"\n",
        );
        assert!(local.endpoints().is_ok());
    }

    #[test]
    fn debug_hides_the_client_secret() {
        let o = oauth("provider = \"google\"\nclient_id = \"id\"\nclient_secret = \"hush\"\n");
        let shown = format!("{o:?} {:?}", o.endpoints().unwrap());
        assert!(!shown.contains("hush") && shown.contains("<redacted>"), "{shown}");
    }
}
