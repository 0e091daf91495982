"""Version history: history tables (``tables``), the ``Versioned`` mixin and its
history classes (``model``), capture of changes (``capture``) and the SQL of its
fast paths (``statements``), change_info (``change_info``) and the read API
(``history``)."""
