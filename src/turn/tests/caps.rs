//! Per-allocation caps on permissions and channels (508 past them, as
//! RFC 8656 §9 and §11 let a server refuse), and how slots come free.

use super::{Harness, alice, peer};
use crate::metrics::LIMIT_REFUSALS;
use crate::reject::Reject;

#[test]
fn permissions_past_the_cap_get_508_and_add_nothing() {
    let mut harness = Harness::with_relay("max-permissions-per-allocation = 3");
    let client = alice();
    let id = harness.allocated(&client, harness.at(0));
    let [p1, p2, p3, p4] = ["127.0.0.1:9", "127.0.0.2:9", "127.0.0.3:9", "127.0.0.4:9"].map(peer);
    harness
        .create_permission(&client, harness.at(0), &[p1, p2, p1])
        .assert_success("two peers, one named twice");
    harness
        .create_permission(&client, harness.at(0), &[p3])
        .assert_success("the third: at the cap");
    harness
        .create_permission(&client, harness.at(10), &[p4])
        .assert_error(508, "a fourth peer");
    // All or nothing: the known peer is not refreshed when the new one does not fit.
    harness
        .create_permission(&client, harness.at(10), &[p1, p4])
        .assert_error(508, "a known peer and a fourth");
    assert_eq!(harness.rejected(Reject::PermissionQuotaReached), 2);
    let routes = |harness: &mut Harness, target, secs| {
        let at = harness.at(secs).instant;
        harness.core.route_from_peer(id, target, at, 1).is_some()
    };
    assert!(
        !routes(&mut harness, p4, 10),
        "the refused peer got nothing"
    );
    assert!(!routes(&mut harness, p1, 300), "p1 kept its first lifetime");

    // At the cap, refreshing what the allocation holds always works.
    harness
        .create_permission(&client, harness.at(100), &[p2, p3])
        .assert_success("refresh at the cap");
    harness
        .channel_bind(&client, harness.at(100), 0x4000, peer("127.0.0.2:7000"))
        .assert_success("a channel to a permitted address");
    harness
        .channel_bind(&client, harness.at(100), 0x4001, p4)
        .assert_error(508, "a channel to a fourth address needs its permission");
    assert_eq!(harness.rejected(Reject::PermissionQuotaReached), 3);

    // p1 lapsed at 300; once the timer has forgotten it, its slot is free.
    harness.core.handle_timeout(harness.at(300).instant);
    harness
        .create_permission(&client, harness.at(300), &[p4])
        .assert_success("p1's slot");
    assert!(routes(&mut harness, p4, 300));
    assert!(LIMIT_REFUSALS.contains(&(
        "relay.max-permissions-per-allocation",
        Reject::PermissionQuotaReached
    )));
}

#[test]
fn channels_past_the_cap_get_508_and_add_nothing() {
    let mut harness = Harness::with_relay("max-channels-per-allocation = 2");
    let client = alice();
    let id = harness.allocated(&client, harness.at(0));
    harness
        .refresh(&client, harness.at(0), 3600)
        .assert_success("long life");
    let [p1, p2, p3] = ["127.0.0.1:9", "127.0.0.2:9", "127.0.0.3:9"].map(peer);
    let bind = |harness: &mut Harness, secs, number, target| {
        harness.channel_bind(&client, harness.at(secs), number, target)
    };
    bind(&mut harness, 0, 0x4000, p1).assert_success("first channel");
    bind(&mut harness, 100, 0x4001, p2).assert_success("second channel: at the cap");
    bind(&mut harness, 100, 0x4002, p3).assert_error(508, "a third channel");
    assert_eq!(harness.rejected(Reject::ChannelQuotaReached), 1);
    let at = harness.at(100).instant;
    assert_eq!(
        harness
            .core
            .route_channel_data(at, &client.five_tuple, 0x4002, 4),
        Err(Reject::NoRoute),
        "the refused channel is not bound"
    );
    assert_eq!(
        harness.core.route_from_peer(id, p3, at, 1),
        None,
        "nor its peer permitted"
    );

    bind(&mut harness, 200, 0x4000, p1).assert_success("rebinding at the cap");
    // 0x4001 lapses at 700, 0x4000 (rebound at 200) at 800.
    harness.core.handle_timeout(harness.at(700).instant);
    bind(&mut harness, 700, 0x4002, p3).assert_success("the lapsed channel's slot");
    bind(&mut harness, 700, 0x4001, p2).assert_error(508, "at the cap again");
    assert_eq!(harness.rejected(Reject::ChannelQuotaReached), 2);
    assert!(LIMIT_REFUSALS.contains(&(
        "relay.max-channels-per-allocation",
        Reject::ChannelQuotaReached
    )));
}
