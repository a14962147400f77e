"""The bot's end-to-end encryption device (Olm/Megolm via matrix-nio on vodozemac)."""
