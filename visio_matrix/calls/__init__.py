"""Call logic: chat commands, who may do what, conference records and their state in the room."""
