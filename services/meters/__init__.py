"""The meters service: meter readings: manual submissions, eMaintenance telemetry, anomalies."""
