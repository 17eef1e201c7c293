"""Network builders and the registry of shipped models (below the lessons: no lesson code here)."""
