//! The built-in message types: `auth`, `ping`, `join_room` / `subscribe`,
//! `leave_room` / `unsubscribe`.
//!
//! They are ordinary handlers registered first, so an application can add its own
//! handlers for the same types: at a higher priority to check or refuse (an error stops
//! the chain), at the default priority to act after the built-in one.

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_proto::{Envelope, ErrorCode, types};

use crate::auth::{Credentials, Outcome};
use crate::connection::auth_result;
use crate::ws::{Frame, Text};
use crate::{Conn, HandlerError, Json, SendError, Server, ServerBuilder};

pub(crate) fn register(builder: ServerBuilder) -> ServerBuilder {
    builder
        .on(types::AUTH, auth)
        .on(types::PING, ping)
        .on(types::JOIN_ROOM, join_room)
        .on(types::SUBSCRIBE, join_room)
        .on(types::LEAVE_ROOM, leave_room)
        .on(types::UNSUBSCRIBE, leave_room)
}

/// `auth` after the connection is up: a late login when authentication is optional; a
/// token refresh when the client is authenticated and sends a token (the same user's:
/// its identity and permissions are swapped, and it leaves the rooms the new token no
/// longer allows); a no-op otherwise, or when the server checks nothing.
async fn auth(server: Server, conn: Conn, env: Envelope) -> Result<Json<Value>, HandlerError> {
    let auth = server.auth();
    if !auth.is_configured() {
        return Ok(Json(auth_result(&conn)));
    }
    let credentials = Credentials::new(env.payload, conn.remote_addr());
    if conn.is_authenticated() {
        if credentials.token().is_none() {
            return Ok(Json(auth_result(&conn)));
        }
        return refresh(&server, &conn, credentials).await;
    }
    match auth.check(credentials, conn.id().to_string()).await {
        Outcome::Accepted(identity) => {
            conn.set_identity(identity);
            server.index_user(&conn);
            server.announce_identity(&conn);
            Ok(Json(auth_result(&conn)))
        }
        // Optional authentication: a wrong guess is an error, not a disconnect; the
        // per-address throttle still counts it.
        Outcome::Rejected(message) => {
            if let Some(metrics) = server.metrics() {
                metrics.auth_failed();
            }
            Err(HandlerError::code_of(ErrorCode::AuthFailed, message))
        }
        Outcome::Throttled(wait) => Err(HandlerError::code_of(
            ErrorCode::RateLimited,
            crate::auth::throttled_message(wait),
        )),
    }
}

/// A fresh token on an open connection.
async fn refresh(
    server: &Server,
    conn: &Conn,
    credentials: Credentials,
) -> Result<Json<Value>, HandlerError> {
    match server
        .auth()
        .check(credentials, conn.id().to_string())
        .await
    {
        Outcome::Accepted(identity) => {
            let same = conn.with_identity(|who| who.is_some_and(|w| w.id == identity.id));
            if !same {
                return Err(HandlerError::code_of(
                    ErrorCode::AuthFailed,
                    "a refreshed token must be for the same user",
                ));
            }
            conn.replace_identity(identity);
            server.announce_identity(conn);
            let left = server.leave_rooms_not_allowed(conn);
            let mut result = auth_result(conn);
            result["left"] = json!(left);
            Ok(Json(result))
        }
        // The connection goes on with its current token, until it expires.
        Outcome::Rejected(message) => {
            if let Some(metrics) = server.metrics() {
                metrics.auth_failed();
            }
            Err(HandlerError::code_of(ErrorCode::AuthFailed, message))
        }
        Outcome::Throttled(wait) => Err(HandlerError::code_of(
            ErrorCode::RateLimited,
            crate::auth::throttled_message(wait),
        )),
    }
}

/// `pong`, encoded once for the life of the program: clients ping often.
const PONG: &str = r#"{"type":"pong","payload":{}}"#;

async fn ping(conn: Conn) {
    let _ = conn.push(Frame::Text(Text::from_static(PONG)));
}

#[derive(Deserialize)]
struct RoomArgs {
    room_id: Option<String>,
    topic: Option<String>,
}

/// The room a join/leave names: `payload.room_id`, `payload.topic`, or the envelope's `room`.
fn room_of(env: &Envelope) -> Result<String, HandlerError> {
    let args: RoomArgs = env
        .payload
        .deserialize()
        .map_err(|e| HandlerError::invalid_payload(&e))?;
    args.room_id
        .or(args.topic)
        .or_else(|| env.room.clone())
        .ok_or_else(|| {
            // As any payload missing a field: the path is the object's (the payload).
            HandlerError::code_of(
                ErrorCode::InvalidPayload,
                "invalid payload: missing field `room_id`",
            )
            .with_details(json!({"path": "", "reason": "missing field `room_id`"}))
        })
}

fn room_error(e: SendError) -> HandlerError {
    match e {
        SendError::InvalidRoom(m) => HandlerError::code_of(ErrorCode::InvalidRoom, m),
        other => HandlerError::internal(other.to_string()),
    }
}

async fn join_room(server: Server, conn: Conn, env: Envelope) -> Result<Json<Value>, HandlerError> {
    let room = room_of(&env)?;
    server.permit(&conn, crate::Action::Join(&room))?;
    server
        .learn_positions([crate::backplane::Target::Room(room.clone())])
        .await;
    let joined = server.join_room(&conn, &room).map_err(room_error)?;
    // Even a join that changed nothing waits: the join it repeats may not be written.
    let durable = server.session_changes_written(&conn).await;
    let mut answer = room_answer(&server, &room, durable);
    if let Some(position) = joined.position {
        // Where the room's stream is: the member's messages start after it.
        answer["position"] = json!(position);
    }
    Ok(Json(answer))
}

async fn leave_room(
    server: Server,
    conn: Conn,
    env: Envelope,
) -> Result<Json<Value>, HandlerError> {
    let room = room_of(&env)?;
    server.leave(&conn, &room);
    // Even a leave that changed nothing waits: the leave it repeats may not be written.
    let durable = server.session_changes_written(&conn).await;
    Ok(Json(room_answer(&server, &room, durable)))
}

/// A join's or leave's answer: the room and its members now, and `durable: false` when
/// the cluster had not kept the change by then.
fn room_answer(server: &Server, room: &str, durable: bool) -> Value {
    let mut answer = json!({ "room_id": room, "members": server.room_size(room) });
    if !durable {
        answer["durable"] = json!(false);
    }
    answer
}

#[cfg(test)]
mod tests {
    use switchboard_proto::{Payload, encode_payload_frame, types};

    #[test]
    fn the_prepared_pong_is_what_the_encoder_writes() {
        let payload = Payload::empty();
        let encoded = encode_payload_frame(types::PONG, &payload);
        assert_eq!(super::PONG, encoded);
    }
}
