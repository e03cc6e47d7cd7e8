# The origin documents' OpenAI fine-tuning code, as written there (Step 2 and Step 3 of the first, the
# polling loop of the second), run against `tunelab serve` with only OPENAI_BASE_URL and OPENAI_API_KEY set.
# One change: the loop polls every 2 seconds instead of 60, to keep the test short.
from openai import OpenAI
import os
import time
client = OpenAI(api_key=os.environ["OPENAI_API_KEY"])
# Upload training file
with open("training_data.jsonl", "rb") as f:
    file_response = client.files.create(file=f, purpose="fine-tune")
print(f"File uploaded: {file_response.id}")
# Start fine-tuning job
job = client.fine_tuning.jobs.create(
    training_file=file_response.id,
    model="gpt-4o-mini-2024-07-18",  # Smallest, cheapest model; good starting point
    hyperparameters={"n_epochs": 3}  # 3 epochs is a good default
)
print(f"Fine-tuning job started: {job.id}")
print(f"Status: {job.status}")
# Monitor progress
while True:
    status = client.fine_tuning.jobs.retrieve(job.id)
    print(f"Status: {status.status}")
    if status.status in ["succeeded", "failed"]:
        break
    time.sleep(2)
# Check job status
job_status = client.fine_tuning.jobs.retrieve(job.id)
print(f"Status: {job_status.status}")
print(f"Fine-tuned model: {job_status.fine_tuned_model}")
# Once complete, test your model
if job_status.fine_tuned_model:
    response = client.chat.completions.create(
        model=job_status.fine_tuned_model,  # Your fine-tuned model ID
        messages=[
            {"role": "system", "content": "You are a customer support agent for TechCorp."},
            {"role": "user", "content": "My invoice shows the wrong address."}
        ]
    )
    print(response.choices[0].message.content)
