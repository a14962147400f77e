"""The MatrixRTC "livekit" focus: what unmodified Element Call clients talk to.

``tokens`` is the lk-jwt-service-compatible token service (OpenID token in, LiveKit JWT out);
``jwt`` issues and verifies those tokens; ``identity`` derives LiveKit identities and room names the
way lk-jwt-service does; ``openid`` asks a user's homeserver who an OpenID token belongs to;
``rooms`` remembers which Matrix room a LiveKit room name stands for. The LiveKit signaling
endpoint (``livekit_*``) verifies the tokens and brings the participants into the conference.
"""
