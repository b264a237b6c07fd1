"""After-sweep statistics and pictures, read from a finished experiment and never written
into its tables: insight (what the study found), plots, and the report's sections."""
