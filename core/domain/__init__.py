"""What the app's results, people and audit trail are, apart from where they are kept: the result's field table
and its rules (:mod:`.results`), accounts, reviews and the keyed audit chain (:mod:`.people`), and UTC instants
and time-zone offsets (:mod:`.times`). Storage and services both import from here; it imports neither."""
