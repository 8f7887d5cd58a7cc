"""The HTTP API (FastAPI): the app and its middleware (`app`), request/response models (`models`),
background dataset jobs (`jobs`), the dashboard summary (`dashboard`), serve-time preprocessing
(`preprocess`). Routes parse, call one library function, format; errors map in one table."""
