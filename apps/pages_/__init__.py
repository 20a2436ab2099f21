"""The app's pages: each module has ``render(view)``; data access lives in pathosae.app."""
