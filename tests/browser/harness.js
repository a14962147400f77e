// Browser side of the headless-Chromium tests (driven by Playwright from tests/browser/*.py).
//
// Everything the Python side calls lives on `window.harness`; every function returns plain JSON so
// that `page.evaluate` can carry it back. Two parts:
//  - `loopback*`: a bare RTCPeerConnection publishing the fake camera + microphone, signaled by the
//    test (no trickle: each description is returned once ICE gathering is complete). Proves the
//    browser, the fake devices and the stats plumbing work, independently of any server.
//  - `lk*`: the unmodified livekit-client (UMD global `LivekitClient`): get a token from the token
//    service (`lkJoin`, like Element Call) or take one (`lkConnect`), connect with it,
//    publish camera + microphone, optionally with end-to-end encryption (shared key), and report what
//    arrived from the other participants (frames decoded, audio received, encryption errors).
"use strict";

(function () {
  const events = []; // [{t, kind, ...}] everything notable, for assertions and failure reports
  const note = (kind, detail) => events.push({ t: Date.now(), kind, ...(detail || {}) });
  window.addEventListener("error", (e) => note("page-error", { message: String(e.message) }));
  window.addEventListener("unhandledrejection", (e) => note("unhandled-rejection", { message: String(e.reason) }));

  function errorInfo(e) {
    return {
      name: e && e.name ? String(e.name) : "Error",
      message: e && e.message !== undefined ? String(e.message) : String(e),
      reason: e && e.reason !== undefined ? e.reason : null,
      reasonName: e && e.reasonName !== undefined ? String(e.reasonName) : null,
      status: e && e.status !== undefined ? e.status : null,
    };
  }

  function waitIceComplete(pc, timeoutMs) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("ICE gathering timed out")), timeoutMs);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  // Sums inbound-rtp stats of one kind over a stats report.
  function inbound(report, kind) {
    const out = { framesDecoded: 0, bytesReceived: 0, packetsReceived: 0, streams: 0 };
    if (!report) return out;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === kind) {
        out.streams += 1;
        out.framesDecoded += s.framesDecoded || 0;
        out.bytesReceived += s.bytesReceived || 0;
        out.packetsReceived += s.packetsReceived || 0;
      }
    });
    return out;
  }

  function attach(track) {
    // A sink for each remote track, like a real call page (muted so that autoplay is allowed).
    const el = document.createElement(track.kind === "video" ? "video" : "audio");
    el.autoplay = true;
    el.muted = true;
    el.playsInline = true;
    document.getElementById("media").appendChild(el);
    return el;
  }

  // ---- plain RTCPeerConnection loopback -------------------------------------------------------

  let loop = null; // {pc, stream}

  async function loopbackStart(publish) {
    const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
    loop = { pc, stream: null };
    pc.addEventListener("connectionstatechange", () => note("pc-state", { state: pc.connectionState }));
    pc.addEventListener("track", (e) => attach(e.track).srcObject = new MediaStream([e.track]));
    if (publish) {
      loop.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      for (const t of loop.stream.getTracks()) pc.addTrack(t, loop.stream);
    }
  }

  async function loopbackOffer() {
    await loopbackStart(true);
    await loop.pc.setLocalDescription(await loop.pc.createOffer());
    await waitIceComplete(loop.pc, 10000);
    return loop.pc.localDescription.sdp;
  }

  async function loopbackAnswer(offerSdp) {
    await loopbackStart(false);
    await loop.pc.setRemoteDescription({ type: "offer", sdp: offerSdp });
    await loop.pc.setLocalDescription(await loop.pc.createAnswer());
    await waitIceComplete(loop.pc, 10000);
    return loop.pc.localDescription.sdp;
  }

  async function loopbackAccept(answerSdp) {
    await loop.pc.setRemoteDescription({ type: "answer", sdp: answerSdp });
  }

  async function loopbackStats() {
    if (!loop) return null;
    const report = await loop.pc.getStats();
    return { state: loop.pc.connectionState, video: inbound(report, "video"), audio: inbound(report, "audio") };
  }

  // ---- livekit-client -------------------------------------------------------------------------

  let lk = null; // {room, keyProvider, remote: Map<trackSid, {identity, kind, track}>}

  function lkListen(room) {
    const E = LivekitClient.RoomEvent;
    room.on(E.ConnectionStateChanged, (state) => note("lk-connection", { state: String(state) }));
    room.on(E.Disconnected, (reason) => note("lk-disconnected", { reason: reason === undefined ? null : reason }));
    room.on(E.ParticipantConnected, (p) => note("lk-participant", { identity: p.identity }));
    room.on(E.TrackSubscribed, (track, pub, p) => {
      const el = attach(track);
      const entry = { identity: p.identity, kind: track.kind, track, el, firstFrameAt: null };
      lk.remote.set(pub.trackSid, entry);
      track.attach(el);
      if (track.kind === "video" && el.requestVideoFrameCallback) {
        // When the first decoded frame reaches the page (join-time measurement).
        el.requestVideoFrameCallback(() => {
          entry.firstFrameAt = Date.now();
          note("lk-first-frame", { identity: p.identity, trackSid: pub.trackSid });
        });
      }
      note("lk-subscribed", { identity: p.identity, kind: track.kind, trackSid: pub.trackSid });
    });
    room.on(E.TrackUnsubscribed, (track, pub, p) => {
      lk.remote.delete(pub.trackSid);
      note("lk-unsubscribed", { identity: p.identity, kind: track.kind, trackSid: pub.trackSid });
    });
    room.on(E.EncryptionError, (error, participant) =>
      note("lk-encryption-error", { message: String(error && error.message ? error.message : error),
                                   identity: participant ? participant.identity : null }));
    room.on(E.ParticipantEncryptionStatusChanged, (encrypted, participant) =>
      note("lk-encryption-status", { encrypted, identity: participant ? participant.identity : null }));
    room.on(E.MediaDevicesError, (e) => note("lk-media-devices-error", { message: String(e && e.message) }));
  }

  // options: {url, token, e2eeKey?: string, publish?: bool (default true), connectTimeoutMs?: number}
  async function lkConnect(options) {
    const L = LivekitClient;
    const roomOptions = { adaptiveStream: false, dynacast: false };
    let keyProvider = null;
    if (options.e2eeKey) {
      keyProvider = new L.ExternalE2EEKeyProvider();
      roomOptions.e2ee = {
        keyProvider,
        worker: new Worker(new URL("lib/livekit-client.e2ee.worker.js", document.baseURI)),
      };
    }
    const room = new L.Room(roomOptions);
    lk = { room, keyProvider, remote: new Map() };
    lkListen(room);
    try {
      if (keyProvider) {
        await keyProvider.setKey(options.e2eeKey);
        await room.setE2EEEnabled(true);
      }
      await room.connect(options.url, options.token, { autoSubscribe: true });
    } catch (e) {
      note("lk-connect-failed", errorInfo(e));
      return { ok: false, error: errorInfo(e) };
    }
    note("lk-connected", { identity: room.localParticipant.identity });
    if (options.publish !== false) {
      try {
        await room.localParticipant.enableCameraAndMicrophone();
      } catch (e) {
        note("lk-publish-failed", errorInfo(e));
        return { ok: false, error: errorInfo(e), connected: true };
      }
    }
    return {
      ok: true,
      identity: room.localParticipant.identity,
      sid: room.localParticipant.sid,
      roomName: room.name,
      e2ee: room.isE2EEEnabled,
    };
  }

  // Asks the token service for a LiveKit token the way Element Call does (cross-origin POST), then
  // connects with it. options: {tokenUrl, body, e2eeKey?, publish?}. Times are Date.now() values.
  async function lkJoin(options) {
    const requestedAt = Date.now();
    let token;
    try {
      const resp = await fetch(options.tokenUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(options.body),
      });
      const body = await resp.json();
      if (!resp.ok) return { ok: false, stage: "token", status: resp.status, error: body, requestedAt };
      token = body;
    } catch (e) {
      return { ok: false, stage: "token", status: null, error: errorInfo(e), requestedAt };
    }
    const tokenAt = Date.now();
    const result = await lkConnect({ ...options, url: token.url, token: token.jwt });
    return { ...result, stage: result.ok ? "joined" : "connect", url: token.url, requestedAt, tokenAt,
             joinedAt: Date.now() };
  }

  // Per remote identity: inbound video/audio counters from each subscribed track's receiver stats.
  async function lkStats() {
    if (!lk) return null;
    const byIdentity = {};
    for (const [sid, r] of lk.remote) {
      const entry = (byIdentity[r.identity] ||= {
        video: { framesDecoded: 0, bytesReceived: 0, packetsReceived: 0, streams: 0 },
        audio: { framesDecoded: 0, bytesReceived: 0, packetsReceived: 0, streams: 0 },
        trackSids: [],
        firstFrameAt: null,
      });
      entry.trackSids.push(sid);
      if (r.firstFrameAt !== null) {
        entry.firstFrameAt = Math.min(entry.firstFrameAt || r.firstFrameAt, r.firstFrameAt);
      }
      const report = await r.track.getRTCStatsReport();
      const got = inbound(report, r.kind);
      for (const key of Object.keys(got)) entry[r.kind][key] += got[key];
    }
    const room = lk.room;
    const participants = {};
    for (const p of room.remoteParticipants.values()) {
      participants[p.identity] = { sid: p.sid, encrypted: p.isEncrypted, tracks: p.trackPublications.size };
    }
    return {
      state: String(room.state),
      identity: room.localParticipant.identity,
      localEncrypted: room.localParticipant.isEncrypted,
      e2ee: room.isE2EEEnabled,
      remote: byIdentity,
      participants,
      activeSpeakers: room.activeSpeakers.map((p) => p.identity),
      encryptionErrors: events.filter((e) => e.kind === "lk-encryption-error"),
    };
  }

  // Mean [r, g, b] of the centre half of the video currently shown for `identity` (null if none).
  function lkVideoColor(identity) {
    for (const r of lk ? lk.remote.values() : []) {
      if (r.identity !== identity || r.kind !== "video" || !r.el.videoWidth) continue;
      const w = r.el.videoWidth, h = r.el.videoHeight;
      const canvas = document.createElement("canvas");
      canvas.width = w;
      canvas.height = h;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(r.el, 0, 0, w, h);
      const data = ctx.getImageData(Math.floor(w / 4), Math.floor(h / 4), Math.floor(w / 2), Math.floor(h / 2)).data;
      const sum = [0, 0, 0];
      for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) sum[c] += data[i + c];
      const n = data.length / 4;
      return sum.map((v) => v / n);
    }
    return null;
  }

  async function lkDisconnect() {
    if (lk) await lk.room.disconnect();
  }

  window.harness = {
    ready: typeof LivekitClient !== "undefined",
    livekitVersion: typeof LivekitClient !== "undefined" ? LivekitClient.version : null,
    events: () => events.slice(),
    loopbackOffer,
    loopbackAnswer,
    loopbackAccept,
    loopbackStats,
    lkConnect,
    lkJoin,
    lkStats,
    lkVideoColor,
    lkDisconnect,
  };
})();
