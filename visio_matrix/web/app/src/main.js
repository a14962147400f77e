// The visio-matrix call page: plain JS on livekit-client, served by the service under /call/.
//
// Two ways in, chosen by the URL query:
//  - `mode=widget` (a room widget inside a Matrix client): the page asks the client for an OpenID token
//    through the widget API (matrix-widget-api), then asks our token service (`../sfu/get`, like
//    Element Call) for a call token with {room, openid_token, device_id}. A refusal (not a member,
//    server not allowed) shows the "refused" state.
//  - `mode=token` (`url=<ws URL>&jwt=<call token>`, given by the guest lobby): connect directly.
//
// States (body[data-state]): loading, connecting, connected, reconnecting, ended, refused, error.
// `window.visioDebug.snapshot()` reports state, participants and tiles (frames shown) for the tests.
import {
  ConnectionError,
  ConnectionState,
  DisconnectReason,
  LogLevel,
  Room,
  RoomEvent,
  Track,
  setLogLevel,
} from "livekit-client";
import { WidgetApi } from "matrix-widget-api";

setLogLevel(LogLevel.warn);

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const events = []; // notable events, for failure reports
const note = (kind, detail) => events.push({ t: Date.now(), kind, ...(detail || {}) });

/** A query parameter, or null when absent or still an unsubstituted widget template (`$matrix_...`). */
function param(name) {
  const value = params.get(name);
  return value && !value.startsWith("$") ? value : null;
}

// ---- state display ------------------------------------------------------------------------------

let state = "loading";
let stateMessage = "";
const STATUS = {
  loading: "Loading…",
  connecting: "Connecting…",
  connected: "In the call",
  reconnecting: "Connection lost, reconnecting…",
  ended: "The call has ended for you",
  refused: "You may not join this call",
  error: "Something went wrong",
};

function setState(next, message) {
  state = next;
  stateMessage = message || "";
  document.body.dataset.state = next;
  $("status").textContent = STATUS[next] + (message && next !== "ended" && next !== "refused" ? ` (${message})` : "");
  const final = next === "ended" || next === "refused" || next === "error";
  const notice = $("notice");
  notice.hidden = !final;
  if (final) {
    $("notice-title").textContent = STATUS[next];
    $("notice-text").textContent = message || "";
    $("rejoin").hidden = next !== "ended" || !canRejoin;
    notice.setAttribute("role", next === "ended" ? "status" : "alert");
    ($("rejoin").hidden ? $("notice-title") : $("rejoin")).focus?.();
  }
  const inCall = next === "connected" || next === "reconnecting";
  for (const id of ["mic", "camera", "screen", "leave"]) $(id).disabled = !inCall;
  note("state", { state: next, message: stateMessage });
}

// ---- names --------------------------------------------------------------------------------------

/** `@user:server:DEVICE` (lk-jwt-service's legacy identity) -> `@user:server`; other identities as they are. */
export function userFromIdentity(identity) {
  if (identity.startsWith("@")) {
    const cut = identity.lastIndexOf(":");
    if (cut > identity.indexOf(":")) return identity.slice(0, cut);
  }
  return identity;
}

const displayName = (p) => (p.name && p.name.trim()) || userFromIdentity(p.identity);

// ---- the call -----------------------------------------------------------------------------------

let room = null;
let canRejoin = false;
let connectArgs = null; // {url, token} of the last connection, to join again after leaving
const tiles = new Map(); // key (identity or identity + ":screen") -> {el, video, label, track}

function participants() {
  if (!room) return [];
  return [room.localParticipant, ...room.remoteParticipants.values()];
}

function tileFor(key, participant, screen) {
  let tile = tiles.get(key);
  if (!tile) {
    const el = document.createElement("figure");
    el.className = "tile" + (screen ? " screen" : "");
    el.dataset.identity = participant.identity;
    el.dataset.key = key;
    const video = document.createElement("video");
    video.autoplay = true;
    video.muted = true; // audio goes through separate elements
    video.playsInline = true;
    const avatar = document.createElement("div");
    avatar.className = "avatar";
    avatar.setAttribute("aria-hidden", "true");
    const label = document.createElement("figcaption");
    label.className = "name";
    el.append(video, avatar, label);
    $("grid").append(el);
    tile = { el, video, avatar, label, track: null };
    tiles.set(key, tile);
  }
  return tile;
}

function showTrack(tile, track) {
  if (tile.track === track) return;
  if (tile.track) tile.track.detach(tile.video);
  tile.track = track;
  if (track) track.attach(tile.video);
  tile.el.classList.toggle("has-video", !!track);
}

/** Brings the grid and the participant list in line with the room. Cheap: called on every change. */
function sync() {
  const seen = new Set();
  const list = $("people-list");
  list.textContent = "";
  for (const p of participants()) {
    const local = p === room.localParticipant;
    const name = displayName(p);
    const micMuted = !p.isMicrophoneEnabled;
    const camera = p.getTrackPublication(Track.Source.Camera);
    const cameraTrack = camera && !camera.isMuted && camera.track ? camera.track : null;
    const tile = tileFor(p.identity, p, false);
    seen.add(p.identity);
    showTrack(tile, cameraTrack);
    tile.el.classList.toggle("speaking", p.isSpeaking);
    tile.el.classList.toggle("local", local);
    tile.el.dataset.micMuted = String(micMuted);
    tile.label.textContent = name + (local ? " (you)" : "");
    if (micMuted) {
      const off = document.createElement("span");
      off.className = "mic-off";
      off.textContent = "muted";
      off.setAttribute("role", "img");
      off.setAttribute("aria-label", "microphone muted");
      tile.label.append(off);
    }
    tile.avatar.textContent = (name.replace(/^@/, "")[0] || "?").toUpperCase();
    tile.el.setAttribute("aria-label", `${name}${local ? " (you)" : ""}${micMuted ? ", muted" : ""}`);
    const screen = p.getTrackPublication(Track.Source.ScreenShare);
    if (screen && screen.track && !screen.isMuted) {
      const key = p.identity + ":screen";
      const screenTile = tileFor(key, p, true);
      seen.add(key);
      showTrack(screenTile, screen.track);
      screenTile.label.textContent = `${name}'s screen`;
      screenTile.el.setAttribute("aria-label", `${name}'s screen`);
    }
    const item = document.createElement("li");
    item.dataset.identity = p.identity;
    item.classList.toggle("speaking", p.isSpeaking);
    const who = document.createElement("span");
    who.textContent = name + (local ? " (you)" : "");
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = `${micMuted ? "muted" : "mic on"}${cameraTrack ? " · camera" : ""}`;
    item.append(who, what);
    list.append(item);
  }
  for (const [key, tile] of tiles) {
    if (!seen.has(key)) {
      showTrack(tile, null);
      tile.el.remove();
      tiles.delete(key);
    }
  }
  $("people-count").textContent = String(participants().length);
  syncControls();
}

function syncControls() {
  const local = room ? room.localParticipant : null;
  const micMuted = local ? !local.isMicrophoneEnabled : false;
  const cameraOff = local ? !local.isCameraEnabled : false;
  const sharing = local ? local.isScreenShareEnabled : false;
  setToggle("mic", micMuted, micMuted ? "Unmute microphone" : "Mute microphone", micMuted ? "Unmute" : "Mute");
  setToggle("camera", cameraOff, cameraOff ? "Turn camera on" : "Turn camera off", cameraOff ? "Camera on" : "Camera off");
  setToggle("screen", sharing, sharing ? "Stop sharing screen" : "Share screen", sharing ? "Stop sharing" : "Share screen");
  $("audio").hidden = !room || room.canPlaybackAudio;
}

function setToggle(id, pressed, label, text) {
  const button = $(id);
  button.setAttribute("aria-pressed", String(pressed));
  button.setAttribute("aria-label", label);
  button.querySelector(".label").textContent = text;
}

const remoteAudio = new Map(); // track sid -> audio element

function listen(r) {
  const E = RoomEvent;
  for (const e of [
    E.ParticipantConnected, E.ParticipantDisconnected, E.TrackPublished, E.TrackUnpublished,
    E.TrackSubscribed, E.TrackUnsubscribed, E.TrackMuted, E.TrackUnmuted, E.LocalTrackPublished,
    E.LocalTrackUnpublished, E.ActiveSpeakersChanged, E.ParticipantNameChanged, E.AudioPlaybackStatusChanged,
  ]) {
    r.on(e, sync);
  }
  r.on(E.TrackSubscribed, (track, pub, p) => {
    note("subscribed", { identity: p.identity, track: track.kind, source: pub.source });
    if (track.kind === Track.Kind.Audio) {
      const el = track.attach();
      document.body.append(el);
      remoteAudio.set(pub.trackSid, el);
    }
  });
  r.on(E.TrackUnsubscribed, (track, pub) => {
    const el = remoteAudio.get(pub.trackSid);
    if (el) {
      track.detach(el);
      el.remove();
      remoteAudio.delete(pub.trackSid);
    }
  });
  r.on(E.TrackMuted, (pub, p) => note("muted", { identity: p.identity, source: pub.source }));
  r.on(E.TrackUnmuted, (pub, p) => note("unmuted", { identity: p.identity, source: pub.source }));
  r.on(E.ConnectionStateChanged, (s) => {
    note("connection", { state: String(s) });
    if (s === ConnectionState.Reconnecting || s === ConnectionState.SignalReconnecting) setState("reconnecting");
    else if (s === ConnectionState.Connected && (state === "reconnecting" || state === "connecting")) setState("connected");
  });
  r.on(E.Disconnected, (reason) => {
    note("disconnected", { reason: reason === undefined ? null : reason });
    if (state === "refused") return;
    const why = {
      [DisconnectReason.CLIENT_INITIATED]: "You left the call.",
      [DisconnectReason.PARTICIPANT_REMOVED]: "You were removed from the call.",
      [DisconnectReason.ROOM_DELETED]: "The call was ended.",
      [DisconnectReason.DUPLICATE_IDENTITY]: "You joined the call from another page.",
      [DisconnectReason.SERVER_SHUTDOWN]: "The call service is shutting down.",
    }[reason];
    for (const tile of tiles.values()) showTrack(tile, null);
    for (const el of remoteAudio.values()) el.remove();
    remoteAudio.clear();
    setState("ended", why || "The connection to the call was lost.");
  });
  r.on(E.MediaDevicesError, (e) => note("media-devices-error", { message: String(e && e.message) }));
}

async function connect(url, token, name) {
  connectArgs = { url, token, name };
  setState("connecting");
  for (const tile of tiles.values()) tile.el.remove();
  tiles.clear();
  room = new Room({ adaptiveStream: true, dynacast: true });
  listen(room);
  try {
    await room.connect(url, token, { autoSubscribe: true });
  } catch (e) {
    note("connect-failed", { name: e && e.name, message: String(e && e.message), status: e && e.status });
    const notAllowed = e instanceof ConnectionError && (e.status === 401 || e.status === 403);
    setState(notAllowed ? "refused" : "error", e && e.message ? String(e.message) : String(e));
    return;
  }
  canRejoin = true;
  note("connected", { identity: room.localParticipant.identity });
  setState("connected");
  if (name) {
    try {
      await room.localParticipant.setName(name);
    } catch (e) {
      note("set-name-failed", { message: String(e && e.message) });
    }
  }
  try {
    await room.localParticipant.enableCameraAndMicrophone();
  } catch (e) {
    note("publish-failed", { message: String(e && e.message) });
    $("status").textContent = `${STATUS.connected} (camera or microphone unavailable: ${e && e.message})`;
  }
  sync();
}

// ---- ways in ------------------------------------------------------------------------------------

class Refused extends Error {}

/** Asks the widget host (the Matrix client) for an OpenID token, then our token service for a call token. */
async function widgetToken() {
  const widgetId = param("widgetId");
  const parentUrl = param("parentUrl");
  const roomId = param("roomId");
  if (!widgetId || !parentUrl || !roomId || window.parent === window) {
    throw new Error("This page must be opened as a widget by a Matrix client (widgetId, parentUrl, roomId).");
  }
  const api = new WidgetApi(widgetId, new URL(parentUrl).origin);
  api.on("action:im.vector.hangup", (ev) => {
    ev.preventDefault();
    api.transport.reply(ev.detail, {});
    if (room) room.disconnect();
  });
  const ready = new Promise((resolve) => api.once("ready", resolve));
  api.start();
  api.sendContentLoaded().catch((e) => note("content-loaded-failed", { message: String(e && e.message) }));
  // Element Web negotiates capabilities first; a host that does not still gets the OpenID request.
  await Promise.race([ready, new Promise((resolve) => setTimeout(resolve, 5000))]);
  note("widget-ready");
  const openid = await api.requestOpenIDConnectToken().catch((e) => {
    throw new Refused(`The Matrix client did not give an OpenID token: ${e && e.message}`);
  });
  let deviceId = param("deviceId");
  if (!deviceId) {
    deviceId = sessionStorage.getItem("visio.deviceId");
    if (!deviceId) {
      deviceId = "VISIO" + Math.random().toString(36).slice(2, 10).toUpperCase();
      sessionStorage.setItem("visio.deviceId", deviceId);
    }
  }
  const body = {
    room: roomId,
    openid_token: {
      access_token: openid.access_token,
      token_type: openid.token_type || "Bearer",
      matrix_server_name: openid.matrix_server_name,
      expires_in: openid.expires_in || 3600,
    },
    device_id: deviceId,
  };
  const response = await fetch(new URL("../sfu/get", location.href), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  if (response.status === 401 || response.status === 403) {
    throw new Refused((answer && answer.error) || `The token service refused (${response.status}).`);
  }
  if (!response.ok || !answer || !answer.url || !answer.jwt) {
    throw new Error(`The token service answered ${response.status}: ${(answer && answer.error) || "no token"}`);
  }
  return { url: answer.url, jwt: answer.jwt, name: param("displayName") };
}

async function start() {
  $("mic").addEventListener("click", () => toggle("mic"));
  $("camera").addEventListener("click", () => toggle("camera"));
  $("screen").addEventListener("click", () => toggle("screen"));
  $("leave").addEventListener("click", () => room && room.disconnect());
  $("audio").addEventListener("click", () => room && room.startAudio().then(sync));
  $("rejoin").addEventListener("click", () => connectArgs && connect(connectArgs.url, connectArgs.token, connectArgs.name));
  $("toggle-people").addEventListener("click", () => {
    const people = $("people");
    people.hidden = !people.hidden;
    $("toggle-people").setAttribute("aria-expanded", String(!people.hidden));
    $("toggle-people").setAttribute("aria-label", people.hidden ? "Show participant list" : "Hide participant list");
    document.querySelector(".call").classList.toggle("no-people", people.hidden);
  });
  const mode = params.get("mode") || (params.get("jwt") ? "token" : "widget");
  setState("connecting");
  try {
    if (mode === "token") {
      const url = params.get("url");
      const jwt = params.get("jwt");
      if (!url || !jwt) throw new Error("The link is incomplete (url and jwt are needed).");
      // The call token should not stay in the address bar (history, screenshots).
      history.replaceState(null, "", location.pathname);
      await connect(url, jwt, null);
    } else if (mode === "widget") {
      const token = await widgetToken();
      await connect(token.url, token.jwt, token.name);
    } else {
      throw new Error(`Unknown mode ${mode}`);
    }
  } catch (e) {
    note("start-failed", { message: String(e && e.message) });
    setState(e instanceof Refused ? "refused" : "error", String(e && e.message ? e.message : e));
  }
}

async function toggle(what) {
  if (!room) return;
  const local = room.localParticipant;
  const button = $(what);
  button.disabled = true;
  try {
    if (what === "mic") await local.setMicrophoneEnabled(!local.isMicrophoneEnabled);
    else if (what === "camera") await local.setCameraEnabled(!local.isCameraEnabled);
    else await local.setScreenShareEnabled(!local.isScreenShareEnabled, { audio: false });
  } catch (e) {
    note("toggle-failed", { what, message: String(e && e.message) });
  } finally {
    button.disabled = !(state === "connected" || state === "reconnecting");
    sync();
  }
}

// ---- test hook ----------------------------------------------------------------------------------

window.visioDebug = {
  events: () => events.slice(),
  snapshot() {
    return {
      state,
      message: stateMessage,
      identity: room ? room.localParticipant.identity : null,
      participants: participants().map((p) => ({
        identity: p.identity,
        name: displayName(p),
        local: p === room.localParticipant,
        micMuted: !p.isMicrophoneEnabled,
        cameraOn: p.isCameraEnabled,
        speaking: p.isSpeaking,
      })),
      tiles: [...tiles.entries()].map(([key, t]) => {
        const quality = t.video.getVideoPlaybackQuality ? t.video.getVideoPlaybackQuality() : null;
        return {
          key,
          identity: t.el.dataset.identity,
          label: t.label.textContent,
          hasVideo: !!t.track,
          currentTime: t.video.currentTime,
          videoWidth: t.video.videoWidth,
          framesShown: quality ? quality.totalVideoFrames : null,
        };
      }),
    };
  },
};

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
