"""The demo map: wandering agents, landmarks, markers that persist, and one avatar per tab."""
