"""Pictures: charts as inline SVG (`svg`) and the dashboard page and static report built from them (`page`)."""
