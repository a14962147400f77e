"""The browser side for guests without a Matrix account: signed guest links and the lobby.

``guest_links`` signs and verifies the links the bot posts, ``lobby`` is the state machine of guests
waiting to be admitted or denied by room members, ``guest_api`` is their HTTP shell (lobby page,
arrive, status and call token) and the ``!visio link/admit/deny`` side the room bot calls.
"""
