"""Example sync pairs and mapping files; the demo copies them from here."""
