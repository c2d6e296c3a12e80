//! `/bans`: ban a user (their allocations and signaling sessions end, and
//! new ones are refused until the ban ends), lift a ban, list the bans.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::AdminApi;
use crate::bans::{TooManyBans, time_text};
use crate::config::parse_duration;
use crate::http::{error, json_response};
use crate::logging::event;
use crate::metrics::Limit;
use crate::server::unix_now;

/// The longest user name a ban takes: RFC 8489 §14.3 caps USERNAME at 513 bytes.
const MAX_USER_BYTES: usize = 513;

impl AdminApi {
    /// `GET`, `POST` and `DELETE /bans`.
    pub(super) fn bans(
        &self,
        method: &Method,
        user: Option<String>,
        duration: Option<String>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let now = unix_now();
        if method == Method::GET || method == Method::HEAD {
            let list = self.server.bans().list();
            let rows: Vec<Value> = list
                .active(now)
                .into_iter()
                .map(|(user, ban)| json!({ "user": user, "since": ban.since, "until": ban.until }))
                .collect();
            return json_response(StatusCode::OK, &Value::Array(rows));
        }
        let user = match checked_user(user, method) {
            Ok(user) => user,
            Err(problem) => return error(StatusCode::BAD_REQUEST, "bad-user", &problem),
        };
        if method == Method::DELETE {
            if !self.server.bans().unban(&user, now) {
                return error(
                    StatusCode::NOT_FOUND,
                    "not-banned",
                    &format!("{user} is not banned"),
                );
            }
            event!(info, "user-unbanned", user = user, by = peer);
            return json_response(StatusCode::OK, &json!({ "user": user, "unbanned": true }));
        }
        let until = match duration.as_deref().map(parse_duration).transpose() {
            // Up to the next whole second: a ban is never shorter than asked.
            Ok(duration) => duration.map(|d| {
                now.saturating_add(d.as_secs())
                    .saturating_add(u64::from(d.subsec_nanos() > 0))
            }),
            Err(what) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad-duration",
                    &format!("for: expected {what}"),
                );
            }
        };
        let max = self.max_bans.load(Ordering::Relaxed);
        if self.server.bans().ban(&user, until, now, max) == Err(TooManyBans) {
            self.server.metrics.limit_hit(Limit::AdminMaxBans);
            event!(info, "ban-refused", user = user, limit = "admin.max-bans");
            return error(
                StatusCode::INSUFFICIENT_STORAGE,
                "too-many-bans",
                &format!("{max} bans are in force (admin.max-bans); lift some first"),
            );
        }
        // Banned first, ended second: nothing can come back in between.
        let (allocations, sessions) = self.end_now(&user);
        event!(
            info,
            "user-banned",
            user = user,
            until = time_text(until),
            allocations = allocations,
            signal_sessions = sessions,
            by = peer
        );
        json_response(
            StatusCode::OK,
            &json!({
                "user": user,
                "since": now,
                "until": until,
                "allocations": allocations,
                "signal_sessions": sessions,
            }),
        )
    }
}

/// The `user` of a POST or DELETE, or what is wrong with it.
fn checked_user(user: Option<String>, method: &Method) -> Result<String, String> {
    let user = user.unwrap_or_default();
    if user.is_empty() {
        Err(format!("name the user: {method} /bans?user=NAME"))
    } else if user.len() > MAX_USER_BYTES {
        Err(format!("a user name is at most {MAX_USER_BYTES} bytes"))
    } else if user.chars().any(char::is_control) {
        Err("a user name has no control characters".to_owned())
    } else {
        Ok(user)
    }
}
