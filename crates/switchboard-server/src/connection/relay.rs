//! The hub's relay: a message that no handler takes, sent on to the room or the client it
//! names (`room`, or `to`: a client id, `all`, `others`), stamped with its sender.

use serde_json::json;
use switchboard_proto::{Envelope, ErrorBody, ErrorCode, ack_ok};

use super::Conn;
use super::dispatch::send_error;
use crate::backplane::Target;
use crate::server::validate_room;
use crate::{Action, ConnId, Server};

/// The room a message names in its payload (`{"room_id": "general", ...}`, as the
/// message protocol pattern's `chat` and `typing` do), and the payload its members
/// get: the same, with `from` (the sender's id) as that pattern's `chat` has it.
fn room_in_payload(env: &Envelope, from: ConnId) -> Option<(String, switchboard_proto::Payload)> {
    let mut fields: serde_json::Map<String, serde_json::Value> = env.payload.deserialize().ok()?;
    let room = fields.get("room_id")?.as_str()?.to_owned();
    fields
        .entry("from")
        .or_insert_with(|| serde_json::Value::String(from.to_string()));
    let payload = switchboard_proto::Payload::from_serialize(&fields).ok()?;
    Some((room, payload))
}

/// How `to` names a user: `user:<id>`.
const USER: &str = "user:";

/// The hub's relay: a message no handler takes, sent on to the room or client it names.
pub(crate) fn relay(server: &Server, conn: &Conn, env: &Envelope) {
    if env.room.is_none() && env.to.is_none() {
        if let Some((room, payload)) = room_in_payload(env, conn.id()) {
            // The message protocol pattern's form: the room in the payload.
            let routed = Envelope {
                room: Some(room),
                payload,
                ..env.clone()
            };
            return relay(server, conn, &routed);
        }
    }
    let from = conn.id();
    let action = match (env.to.as_deref(), env.room.as_deref()) {
        (Some("all" | "others"), None) => Some(Action::Direct("all")),
        (Some(to), None) => Some(Action::Direct(to)),
        (None, Some(room)) => Some(Action::Publish(room)),
        _ => None,
    };
    if let Some(Err(refused)) = action.map(|a| server.permit(conn, a)) {
        send_error(conn, env.ref_id.as_deref(), refused.body());
        return;
    }
    let outcome: Result<usize, ErrorBody> = match (env.to.as_deref(), env.room.as_deref()) {
        (Some(_), Some(_)) => Err(ErrorBody::new(
            ErrorCode::InvalidEnvelope,
            "name a `room` or a `to`, not both",
        )),
        (Some("all"), None) => Ok(server.relay(Target::All, vec![], env, from)),
        (Some("others"), None) => Ok(server.relay(Target::All, vec![from], env, from)),
        (Some(to), None) if to.starts_with(USER) => {
            Ok(server.relay(Target::User(to[USER.len()..].to_owned()), vec![], env, from))
        }
        (Some(to), None) => match to.parse::<ConnId>() {
            Ok(id) if server.may_reach(id) => {
                Ok(server.relay(Target::Conns(vec![id]), vec![], env, from))
            }
            _ => Err(ErrorBody::new(
                ErrorCode::ClientNotFound,
                format!("no client `{to}` is connected"),
            )),
        },
        (None, Some(room)) => match validate_room(room) {
            Ok(()) => Ok(server.relay(Target::Room(room.to_owned()), vec![from], env, from)),
            Err(e) => Err(ErrorBody::new(ErrorCode::InvalidRoom, e.to_string())),
        },
        (None, None) => Err(ErrorBody::new(
            ErrorCode::UnknownType,
            "nothing to relay to",
        )),
    };
    match (outcome, env.ref_id.as_deref()) {
        (Ok(n), Some(r)) => {
            let result = serde_json::value::to_raw_value(&json!({ "delivered": n })).ok();
            let _ = conn.reply(Some(r), ack_ok(r, result.as_deref()));
        }
        (Ok(_), None) => {}
        (Err(e), r) => send_error(conn, r, &e),
    }
}
