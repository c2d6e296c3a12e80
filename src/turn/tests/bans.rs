//! Bans: a banned user authenticates and gets 403 on every request that
//! needs credentials, until the ban's time (as passed in) is up.

use super::{Harness, UNIX, alice, bob, peer, rest_client};
use crate::reject::Reject;
use crate::wire::attr;

#[test]
fn a_banned_user_gets_403_on_every_request_until_the_ban_ends() {
    let mut harness = Harness::new();
    let client = alice();
    harness.allocated(&client, harness.at(0));
    let banned_until = UNIX + 60;
    harness
        .core
        .shared
        .bans
        .ban("alice", Some(banned_until), UNIX + 1, 10)
        .unwrap();

    // The allocation made before the ban (the admin API ends it; the core
    // alone does not) can do nothing more.
    let at = harness.at(1);
    let reply = harness.refresh(&client, at, 600);
    reply.assert_error(403, "Refresh");
    assert!(
        reply.get(attr::MESSAGE_INTEGRITY).is_some(),
        "signed: the user did authenticate"
    );
    harness
        .create_permission(&client, at, &[peer("127.0.0.1:9")])
        .assert_error(403, "CreatePermission");
    harness
        .channel_bind(&client, at, 0x4000, peer("127.0.0.1:9"))
        .assert_error(403, "ChannelBind");
    let elsewhere = client.on_port(40100);
    harness
        .allocate(&elsewhere, harness.at(59))
        .assert_error(403, "Allocate in the ban's last second");
    assert_eq!(harness.rejected(Reject::UserBanned), 4);

    // Another user is not touched.
    harness.allocated(&bob(), harness.at(2));

    // The time passed in is what ends the ban.
    harness.allocated(&elsewhere, harness.at(60));
    harness
        .refresh(&client, harness.at(60), 600)
        .assert_success("Refresh after the ban");
}

#[test]
fn rest_usernames_are_banned_by_their_user_part() {
    let mut harness = Harness::new();
    let bans = harness.core.shared.bans.clone();
    bans.ban("carol", None, UNIX, 10).unwrap();
    for (port, expiry) in [(41000, UNIX + 3600), (41001, UNIX + 7200)] {
        let client = rest_client(port, "carol", expiry);
        harness
            .allocate(&client, harness.at(0))
            .assert_error(403, "a freshly minted username of a banned user");
    }
    // A user whose name merely contains the banned one is someone else.
    harness.allocated(&rest_client(41002, "carol2", UNIX + 3600), harness.at(0));

    // Lifted, not expired: the same credentials work at once.
    assert!(bans.unban("carol", UNIX + 1));
    harness.allocated(&rest_client(41000, "carol", UNIX + 3600), harness.at(1));
}
