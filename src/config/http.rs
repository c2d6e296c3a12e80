//! The `[http]` table: the API keys of `/ice-servers` and the proxies whose
//! `X-Forwarded-For` is believed.

use ipnet::IpNet;

use super::walk::{Ctx, Section, values};

const HTTP_KEYS: &[&str] = &["api-keys", "trusted-proxies"];
/// API keys are bearer secrets: long enough not to be guessed.
pub(super) const MIN_API_KEY_CHARS: usize = 16;

/// The `[http]` table: who may fetch ICE servers, and which proxies to believe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpConfig {
    /// Keys for `GET /ice-servers` (`Authorization: Bearer KEY` or `?key=KEY`).
    pub(crate) api_keys: Vec<String>,
    /// Peers whose `X-Forwarded-For` names the real client.
    pub(crate) trusted_proxies: Vec<IpNet>,
}

pub(super) fn read_http(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> HttpConfig {
    let table = top.section(cx, "http", HTTP_KEYS);
    let api_keys = table.list::<String>(cx, "api-keys", Vec::new());
    let key = table.key("api-keys");
    for (i, item) in api_keys.value.iter().enumerate() {
        let chars = item.value.chars().count();
        if chars < MIN_API_KEY_CHARS {
            let message = format!("expected at least {MIN_API_KEY_CHARS} characters, got {chars}");
            cx.report(format!("{key}[{i}]"), item.span.as_ref(), message);
        }
    }
    let trusted_proxies = table.list::<IpNet>(cx, "trusted-proxies", Vec::new());
    HttpConfig {
        api_keys: values(api_keys.value),
        trusted_proxies: values(trusted_proxies.value),
    }
}
