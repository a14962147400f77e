"""The browser side for guests without a Matrix account: signed guest links and the lobby.

Only pure groundwork so far (no HTTP): ``guest_links`` signs and verifies the links the bot posts,
``lobby`` is the state machine of guests waiting to be admitted or denied by room members.
"""
