//! A new connection's rooms, set as the client has them: after a fresh session every
//! room is joined again; after a resume, a room the session did not give back is joined
//! again, and a room it gave back that the client had left, in a leave answered before
//! the cluster kept it (`durable: false`), is left again. And what a join's or leave's
//! answer says, noted as it comes.

use std::collections::BTreeSet;

use futures_util::SinkExt;
use serde_json::json;
use switchboard_proto::{
    Ack, Envelope, Parts, Payload, Position, Recovery, RecoveryGap, ResumeOutcome, encode_parts,
    types,
};
use tokio_tungstenite::tungstenite::Message;

use crate::connect::Ws;
use crate::locks::lock;
use crate::state::Inner;

type WsResult = Result<(), tokio_tungstenite::tungstenite::Error>;

/// Sends on `ws`, before anything else, what sets its rooms as the client has them:
/// `outcome` is the resume's when the session was resumed, `in_flight` the requests
/// about to be sent again. The rooms whose last change was not kept are read here and
/// settled by [`settled`] once the connection is up.
pub(crate) async fn set_rooms(
    inner: &Inner,
    ws: &mut Ws,
    outcome: Option<&mut ResumeOutcome>,
    in_flight: &[(String, Message)],
) -> WsResult {
    let Some(outcome) = outcome else {
        let rooms: Vec<String> = lock(&inner.rooms).iter().cloned().collect();
        return rejoin(inner, ws, &rooms).await;
    };
    let unsettled = lock(&inner.unsettled).clone();
    let missing = rooms_not_restored(inner, outcome);
    let left = rooms_left_but_restored(inner, outcome, &unsettled, &rooms_being_joined(in_flight));
    rejoin(inner, ws, &missing).await?;
    leave_again(ws, &left).await
}

/// The connection is up with its rooms set as the client has them: nothing is
/// unsettled (the answers to what [`set_rooms`] sent, read from here on, unsettle a
/// room again if need be).
pub(crate) fn settled(inner: &Inner) {
    lock(&inner.unsettled).clear();
}

/// The rooms this client was in that a resumed session did not give back: each is
/// added to the outcome as not recovered ([`RecoveryGap::NotRestored`]), to be joined
/// again. A server gives every room back; this keeps a client from staying out of a
/// room without a word if one does not.
fn rooms_not_restored(inner: &Inner, outcome: &mut ResumeOutcome) -> Vec<String> {
    let missing: Vec<String> = lock(&inner.rooms)
        .iter()
        .filter(|room| !outcome.rooms.contains_key(*room))
        .cloned()
        .collect();
    for room in &missing {
        tracing::warn!(%room, "the resumed session is not in a room this client was in: joining it again");
        let lost = Recovery::lost(RecoveryGap::NotRestored, Position::new("", 0));
        outcome.rooms.insert(room.clone(), lost);
    }
    missing
}

/// The rooms a resumed session gave back that this client left, in a leave the server
/// answered before the cluster had kept it (`unsettled`): the session came back from
/// before the leave (it moved to another node before the leave was written). Taken out
/// of the outcome (the client is not in them), to be left again.
fn rooms_left_but_restored(
    inner: &Inner,
    outcome: &mut ResumeOutcome,
    unsettled: &BTreeSet<String>,
    joining: &BTreeSet<String>,
) -> Vec<String> {
    let rooms = lock(&inner.rooms);
    let left: Vec<String> = unsettled
        .iter()
        .filter(|room| !rooms.contains(*room) && outcome.rooms.contains_key(*room))
        .filter(|room| !joining.contains(*room))
        .cloned()
        .collect();
    for room in &left {
        tracing::info!(%room, "the resumed session is in a room this client left: leaving it again");
        outcome.rooms.remove(room);
    }
    left
}

/// The rooms the requests in flight join (`join_room`, `subscribe`). A room being joined
/// is not yet among the client's rooms, and is never left again after a resume: the
/// join, sent again after the leave, may be answered from the server's record of
/// answers without being made again, and the client would end out of a room it then
/// counts itself in.
fn rooms_being_joined(in_flight: &[(String, Message)]) -> BTreeSet<String> {
    in_flight
        .iter()
        .filter_map(|(_, frame)| Envelope::decode(frame.to_text().ok()?).ok())
        .filter(|env| env.kind == types::JOIN_ROOM || env.kind == types::SUBSCRIBE)
        .filter_map(|env| {
            let payload: serde_json::Value = env.payload.deserialize().ok()?;
            let room = payload.get("room_id").or_else(|| payload.get("topic"));
            room?.as_str().map(str::to_owned)
        })
        .collect()
}

/// Leaves `rooms` again on a new connection (see [`rooms_left_but_restored`]).
async fn leave_again(ws: &mut Ws, rooms: &[String]) -> WsResult {
    for room in rooms {
        ws.feed(room_change(
            types::LEAVE_ROOM,
            &format!("releave:{room}"),
            room,
        ))
        .await?;
    }
    ws.flush().await
}

/// A `join_room` or `leave_room` frame the client sends of itself.
fn room_change(kind: &str, ref_id: &str, room: &str) -> Message {
    let payload =
        Payload::from_serialize(&json!({ "room_id": room })).unwrap_or_else(|_| Payload::empty());
    Message::text(encode_parts(&Parts {
        kind,
        payload: &payload,
        ref_id: Some(ref_id),
        room: None,
        to: None,
        from: None,
        trace: None,
        offset: None,
    }))
}

/// Joins `rooms` again on a new connection (a fresh session's, or those a resumed one
/// did not give back).
async fn rejoin(inner: &Inner, ws: &mut Ws, rooms: &[String]) -> WsResult {
    for room in rooms {
        // A fresh start in the room: its position comes with the answer.
        lock(&inner.streams).forget_room(room);
        ws.feed(room_change(
            types::JOIN_ROOM,
            &format!("rejoin:{room}"),
            room,
        ))
        .await?;
    }
    ws.flush().await
}

/// Notes what a join's or leave's answer says: the room stream's position where the
/// member's messages start (a join's), and whether the cluster kept the change before
/// the answer was sent (`durable: false` when not: the room is set again after the
/// next resume; a later answer for the room settles it).
pub(crate) fn note_answer(inner: &Inner, ack: &Ack) {
    let Some(result) = &ack.result else { return };
    let Some(room) = result["room_id"].as_str() else {
        return;
    };
    if let Some(position) = result.get("position") {
        if let Ok(position) = serde_json::from_value::<Position>(position.clone()) {
            lock(&inner.streams).joined(room, &position);
        }
    }
    if result["members"].is_u64() {
        let mut unsettled = lock(&inner.unsettled);
        if result["durable"] == false {
            tracing::debug!(%room, ack = %ack.ref_id, "a room change the cluster has not kept");
            unsettled.insert(room.to_owned());
        } else {
            unsettled.remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rooms_being_joined_are_those_of_the_joins_in_flight() {
        let in_flight: Vec<(String, Message)> = [
            r#"{"type":"join_room","ref":"a","payload":{"room_id":"one"}}"#,
            r#"{"type":"subscribe","ref":"b","payload":{"topic":"two"}}"#,
            r#"{"type":"leave_room","ref":"c","payload":{"room_id":"three"}}"#,
            r#"{"type":"rpc","ref":"d","payload":{"method":"join_room","params":{"room_id":"four"}}}"#,
        ]
        .into_iter()
        .map(|text| (String::new(), Message::text(text)))
        .collect();
        let joining: Vec<String> = rooms_being_joined(&in_flight).into_iter().collect();
        assert_eq!(joining, ["one", "two"]);
    }
}
