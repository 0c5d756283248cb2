// A tiny backend next to switchboard (docs/auth.md): it signs the tokens its users'
// browsers connect with, and talks to the hub's server API. No dependencies: Node's
// own crypto signs HS256, and fetch calls the API.
import { createHmac } from "node:crypto";

const b64url = (data) => Buffer.from(data).toString("base64url");

/** A JWT (HS256) with these claims, signed with the secret the hub also has. */
export function signToken(secret, claims) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const signature = createHmac("sha256", secret).update(`${header}.${body}`).digest("base64url");
  return `${header}.${body}.${signature}`;
}

/** A token for `user`, valid for `seconds`, that may join `rooms` and publish to `publish`. */
export function tokenFor(secret, user, { rooms = [], publish = [], seconds = 3600, info } = {}) {
  const now = Math.floor(Date.now() / 1000);
  return signToken(secret, { sub: user, iat: now, exp: now + seconds, rooms, publish, info });
}

/** Calls the hub's server API: `POST path` with `body`, or `GET path` without. */
export async function api(hub, key, path, body) {
  const response = await fetch(`${hub}/api${path}`, {
    method: body === undefined ? "GET" : "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}
