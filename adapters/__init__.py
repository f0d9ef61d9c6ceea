"""Platform adapters. Each owns one platform connection and plugs into `bot` through the
`parley.adapters` entry points; `bot/` never imports from here."""
