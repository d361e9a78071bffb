"""learnforget advise: forecasts from pilot runs (pilot.py runs them, page.py writes the forecast page)."""
