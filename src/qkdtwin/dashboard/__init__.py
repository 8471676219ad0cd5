"""`qkdtwin dashboard LAB`: a live web view of a deployed lab (topology, link metrics,
sessions and their paths, the event stream) with demonstration controls (eavesdropper on a
link, cut/restore a link)."""
