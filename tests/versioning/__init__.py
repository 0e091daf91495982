"""Tests of SPEC §1-§3: versioned models, history and change_info (a package so test
module names may repeat those of other test folders)."""
