"""The judge service: zoom_score for the curriculum. Not built yet (issue 4)."""
