-- The public, narrow view of every reading: one row per metric per message.
{{readings_view}}
